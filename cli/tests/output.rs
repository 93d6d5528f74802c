//! The `corepool` command when its standard output fails: a reader that went
//! away ends it quietly with status 141 (as `cat` or `ls` end), a full or
//! broken output is one line on stderr and status 1; never a panic, and no
//! process left behind.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest one run of the binary may take before the test fails.
const LIMIT: Duration = Duration::from_secs(300);

/// What the shell reports for a command ended by SIGPIPE: 128 + 13.
const BROKEN_PIPE: i32 = 141;

/// The write end of a pipe whose read end is already closed: every write to
/// it fails with EPIPE, as when `corepool ... | head -1` has read its line.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two descriptors, as pipe2 needs.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing
    // else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// `/dev/full`: every write fails with ENOSPC.
fn full_device() -> Stdio {
    Stdio::from(
        OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full opens"),
    )
}

/// Whether any live process is in process group `group`.
fn group_has_members(group: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // After the command name (which may hold spaces): state,
                // ppid, pgrp. A zombie has ended already.
                let mut fields = stat
                    .rsplit_once(')')
                    .map_or("", |(_, r)| r)
                    .split_whitespace();
                let state = fields.next().unwrap_or("Z");
                state != "Z" && fields.nth(1).and_then(|g| g.parse().ok()) == Some(group)
            })
        })
}

/// Runs `corepool args` with `stdout`, in a process group of its own (so
/// that whatever it starts can be found, and killed if it hangs); returns
/// its status and stderr once every process of the group has ended.
fn run_with_stdout(args: &[&str], stdout: Stdio) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corepool"))
        .args(args)
        .env_remove("COREPOOL_PYTHON")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("corepool starts");
    let group = child.id();
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let status = child.wait().expect("wait for corepool");
        let _ = done_tx.send(());
        (status, text)
    });
    if done_rx.recv_timeout(LIMIT).is_err() {
        // SAFETY: kill has no memory-safety preconditions; the group is
        // the command's own (it is not reaped yet, so its id is not reused).
        unsafe { libc::kill(-(group as i32), libc::SIGKILL) };
        panic!("corepool {args:?} ran longer than {LIMIT:?}");
    }
    let (status, text) = waiter.join().expect("the waiter thread");
    // Pool workers end with their parent and Python with corepool, but
    // asynchronously: poll (a check, not a synchronisation).
    common::eventually(&format!("corepool {args:?} left no process"), || {
        !group_has_members(group)
    });
    (status, text)
}

fn assert_quiet_broken_pipe(args: &[&str]) {
    let (status, stderr) = run_with_stdout(args, closed_pipe());
    assert_eq!(
        status.code(),
        Some(BROKEN_PIPE),
        "corepool {args:?}: {status:?}, stderr:\n{stderr}"
    );
    assert!(stderr.is_empty(), "corepool {args:?} said:\n{stderr}");
}

fn assert_one_line_on_a_full_output(args: &[&str]) {
    let (status, stderr) = run_with_stdout(args, full_device());
    assert_eq!(
        status.code(),
        Some(1),
        "corepool {args:?}: {status:?} (signal {:?}), stderr:\n{stderr}",
        status.signal()
    );
    assert_eq!(
        stderr, "corepool: cannot write the output: No space left on device (os error 28)\n",
        "corepool {args:?}"
    );
}

#[test]
fn info_stops_quietly_when_its_reader_is_gone() {
    assert_quiet_broken_pipe(&["info"]);
    assert_quiet_broken_pipe(&["info", "--json"]);
    assert_one_line_on_a_full_output(&["info"]);
}

#[test]
fn pin_stops_quietly_when_its_reader_is_gone() {
    assert_quiet_broken_pipe(&["pin", "--topology"]);
    // The sweep prints the topology first: it stops there, before any pool.
    assert_quiet_broken_pipe(&[
        "pin",
        "--quick",
        "--workload",
        "latency",
        "--size",
        "50",
        "--repeat",
        "1",
    ]);
    assert_one_line_on_a_full_output(&[
        "pin",
        "--json",
        "--quick",
        "--workload",
        "latency",
        "--size",
        "50",
        "--repeat",
        "1",
        "--layouts",
        "none",
    ]);
}

#[test]
fn soak_stops_quietly_when_its_reader_is_gone() {
    assert_quiet_broken_pipe(&["soak", "--tasks", "100", "--json"]);
    assert_one_line_on_a_full_output(&["soak", "--tasks", "100"]);
}

#[test]
fn bench_stops_quietly_when_its_reader_is_gone() {
    let bench = [
        "bench", "--quick", "--only", "map", "--size", "1000", "--repeat", "1",
    ];
    assert_quiet_broken_pipe(&bench);
    assert_quiet_broken_pipe(&[&bench[..], &["--json"]].concat());
    assert_one_line_on_a_full_output(&bench);
    assert_one_line_on_a_full_output(&[
        "bench",
        "--quick",
        "--scale",
        "--only",
        "map",
        "--size",
        "1000",
        "--repeat",
        "1",
        "--workers",
        "1",
    ]);
}

#[test]
fn bench_vs_python_stops_quietly_and_leaves_no_python() {
    let has_python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_python {
        return; // nothing to leave behind
    }
    // The group check in `run_with_stdout` finds a Python or a Python pool
    // worker left running.
    assert_quiet_broken_pipe(&[
        "bench",
        "--quick",
        "--only",
        "latency",
        "--size",
        "100",
        "--repeat",
        "1",
        "--vs-python",
    ]);
}
