//! A small harness for tests that start processes: each test runs under a
//! watchdog, and afterwards the harness checks that it left no child process
//! (zombie or live), no new descriptor and no new `/dev/shm` entry.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A test: a name and a function that panics on failure.
pub type Test = (&'static str, fn());

/// `tests![a, b]`: the named test functions, with their names.
#[allow(unused_macros)] // the standard-harness tests use only the helpers
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        &[$((stringify!($f), $f as fn())),*]
    };
}
#[allow(unused_imports)]
pub(crate) use tests;

/// How long one test may take before the watchdog fails the run.
pub const WATCHDOG: Duration = Duration::from_secs(120);

fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The command name may contain spaces: parse after the last ')'.
        let Some(rest) = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().to_string())
        else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((child, state));
        }
    }
    out
}

/// Whether process `pid` has ended (gone, or a zombie waiting to be reaped).
pub fn is_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Children of process `pid` (live or zombie).
pub fn descendants_of(pid: u32) -> Vec<u32> {
    children_of(pid).into_iter().map(|(p, _)| p).collect()
}

/// Live and zombie children of this process.
pub fn children() -> Vec<(u32, char)> {
    children_of(std::process::id())
}

/// Live and zombie children of this process but the program's fork server
/// (the default start method's, which lives as long as the program, not
/// as a pool): what a test's pools and processes left.
pub fn children_but_the_fork_server() -> Vec<(u32, char)> {
    let fork_server = corepool::fork_server_pid();
    children()
        .into_iter()
        .filter(|&(pid, _)| Some(pid as i32) != fork_server)
        .collect()
}

/// Other processes running this very executable: our workers, whether still
/// our children or orphaned (reparented) after a bug.
pub fn processes_of_this_binary() -> Vec<u32> {
    let me = std::process::id();
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .collect()
}

/// This process's open descriptors.
pub fn open_fds() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Entries in /dev/shm, less those a live process outside this one's tree
/// maps or holds open: another job's entries (a concurrent MPI run's) are
/// not this test's to count. An entry nobody holds counts, as does one this
/// process or a descendant holds.
pub fn shm_entries() -> BTreeSet<String> {
    let all: BTreeSet<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if all.is_empty() {
        return all;
    }
    let foreign = shm_held_outside_this_tree();
    all.difference(&foreign).cloned().collect()
}

/// This process and all its descendants.
fn this_tree() -> BTreeSet<u32> {
    let mut tree = BTreeSet::from([std::process::id()]);
    let mut frontier = vec![std::process::id()];
    while let Some(pid) = frontier.pop() {
        for child in descendants_of(pid) {
            if tree.insert(child) {
                frontier.push(child);
            }
        }
    }
    tree
}

/// Names in /dev/shm that processes outside [`this_tree`] map or hold open
/// (as far as /proc lets us see: an unreadable process holds nothing here,
/// so its entries still count against the test).
fn shm_held_outside_this_tree() -> BTreeSet<String> {
    let ours = this_tree();
    let mut held = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return held;
    };
    let pids = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()));
    for pid in pids.filter(|pid| !ours.contains(pid)) {
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            for line in maps.lines() {
                if let Some((_, name)) = line.split_once("/dev/shm/") {
                    held.insert(name.trim_end_matches(" (deleted)").to_string());
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    if let Ok(name) = target.strip_prefix("/dev/shm") {
                        held.insert(name.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    held
}

/// This process's memory mappings.
pub fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count())
}

/// What a process holds: (descriptors, mappings). Takes an argument so that
/// a pool can run it on a worker.
pub fn holdings(_: u8) -> (usize, usize) {
    (open_fds().len(), mappings())
}

/// Asserts that what a process holds did not grow over a loop: no new
/// descriptor, and no more than a few mappings (allocator arenas may map
/// some more).
pub fn assert_no_growth(what: &str, before: (usize, usize), after: (usize, usize)) {
    assert!(
        after.0 <= before.0,
        "{what}: descriptors {before:?} -> {after:?}"
    );
    assert!(
        after.1 <= before.1 + 8,
        "{what}: mappings {before:?} -> {after:?}"
    );
}

/// Waits (at most 30 s) until `cond` holds; children take a moment to be reaped
/// after a pool's threads end. Polls: this is a check, not synchronisation.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    // Generous: a loaded 2-core machine can take seconds to start a process.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "still not true after 30 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs each test under a watchdog and the leak checks; prints libtest-style
/// lines and exits non-zero on any failure.
pub fn run(tests: &[Test]) {
    corepool::init();
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let started = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    println!("\nrunning {} tests", selected.len());
    for (name, test) in selected {
        // The program's fork server (the default start method's) lives as
        // long as the program, not as a test: running before the baseline,
        // its process and descriptors are the baseline's.
        let fork_server = ready_fork_server();
        let fds = open_fds();
        let shm = shm_entries();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let test_name = name.to_string();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(WATCHDOG).is_err() {
                eprintln!("test {test_name} ... HUNG for {WATCHDOG:?}: the watchdog fails the run");
                std::process::exit(2);
            }
        });
        let result = std::panic::catch_unwind(*test);
        let _ = done_tx.send(());
        let _ = watchdog.join();
        let leaks = std::panic::catch_unwind(|| {
            // A fork server the test had started again (its environment
            // changed, or it was killed) is stopped: its descriptors are
            // not the baseline's. The one of the baseline is counted
            // explicitly, and only it.
            if corepool::fork_server_pid() != fork_server {
                corepool::stop_fork_server();
            }
            eventually("every child reaped", || {
                children_but_the_fork_server().is_empty()
            });
            let fork_server = corepool::fork_server_pid();
            eventually("no orphaned worker left", || {
                processes_of_this_binary()
                    .iter()
                    .all(|&pid| Some(pid as i32) == fork_server)
            });
            let leaked = || {
                open_fds()
                    .difference(&fds)
                    .map(|fd| {
                        format!(
                            "{fd} -> {:?}",
                            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let first = leaked();
            // A descriptor closed since the baseline is no leak (the baseline
            // may catch one a thread is about to close); a new one is.
            let settled = std::panic::catch_unwind(|| {
                eventually("no descriptor leaked", || open_fds().is_subset(&fds))
            });
            if settled.is_err() {
                eprintln!("descriptors open right after the test: {first:?}");
            }
            assert!(settled.is_ok(), "descriptors leaked: {:?}", leaked());
            let now = shm_entries();
            assert!(
                now.is_subset(&shm),
                "new /dev/shm entries: {:?}",
                now.difference(&shm).collect::<Vec<_>>()
            );
        });
        match (result, leaks) {
            (Ok(()), Ok(())) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            (Err(_), _) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
            (Ok(()), Err(_)) => {
                failed += 1;
                println!("test {name} ... FAILED (left something behind)");
            }
        }
    }
    let status = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {status}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s\n",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(101);
    }
}

/// Has the program's fork server started (as its first pool does) and
/// waits until it is ready: its pid, `None` if it cannot start here.
pub fn ready_fork_server() -> Option<i32> {
    if corepool::fork_server_pid().is_none() {
        let first = corepool::Pool::builder()
            .workers(1)
            .pinning(corepool::Pinning::None)
            .build();
        drop(first);
    }
    corepool::fork_server_pid()
}

/// `cmd.output()` under a watchdog: a command that has not ended within
/// `limit` is killed, its whole process group with it, and the test fails
/// saying so, instead of hanging the suite.
pub fn output_within(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    // Its own process group, so the watchdog ends whatever it started too.
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id() as i32;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let (exited_tx, exited_rx) = std::sync::mpsc::channel::<()>();
    let waiter = std::thread::spawn(move || {
        // WNOWAIT: learns of the exit without reaping, so the pid (and the
        // group id) stays ours until `child.wait` below: the watchdog's kill
        // can never reach a process that reused it.
        // SAFETY: an all-zero `siginfo_t` is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable `siginfo_t`.
        unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        let _ = exited_tx.send(());
    });
    let timed_out = exited_rx.recv_timeout(limit).is_err();
    if timed_out {
        // SAFETY: `kill` has no memory preconditions; the group's leader is
        // our unreaped child, so `-pid` still names its group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = waiter.join();
    let status = child.wait().expect("the command is reaped");
    let output = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        !timed_out,
        "watchdog: {cmd:?} did not end within {limit:?}; stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs this test binary again as a program of its own, its role given by
/// the environment variable `role`, under a watchdog of `limit`: what it
/// printed.
pub fn run_self_as(role: &str, limit: Duration) -> std::process::Output {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.env(role, "1");
    output_within(&mut command, limit)
}

/// For a test program that leaves a child running when it exits: points
/// this process's stdout and stderr at /dev/null (the child inherited them
/// and would otherwise keep the test's pipe open past our exit) and returns
/// a close-on-exec copy of the old stdout to print the answer on.
pub fn answer_on_private_stdout() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: descriptor calls on our own standard streams; the file takes
    // the one fresh close-on-exec copy, owned by nothing else.
    unsafe {
        let copy = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        assert!(copy >= 0, "F_DUPFD_CLOEXEC");
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        assert!(null >= 0 && libc::dup2(null, 1) == 1 && libc::dup2(null, 2) == 2);
        libc::close(null);
        std::fs::File::from_raw_fd(copy)
    }
}

/// Makes the whole process (every thread: glibc applies the calls to all)
/// user and group `nobody`, for good. Needs root.
pub fn become_nobody() {
    // SAFETY: plain system calls with integer arguments.
    let dropped = unsafe {
        libc::setresgid(65534, 65534, 65534) == 0 && libc::setresuid(65534, 65534, 65534) == 0
    };
    assert!(dropped, "setresuid: {}", std::io::Error::last_os_error());
}

/// Whether this process runs as root (the privilege-dropping tests skip
/// otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Yields `0..real` but claims (an exact) `claimed` items: `map` must trust
/// what comes, not what was promised.
pub struct Liar {
    pub next: u64,
    pub real: u64,
    pub claimed: usize,
}

impl Iterator for Liar {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        (self.next < self.real).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claimed, Some(self.claimed))
    }
}
