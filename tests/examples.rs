//! Runs the examples that port the seed (cargo builds them before the tests)
//! and checks what they print. Runs with its own `main`.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/<name>`, next to this test's own directory.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path: PathBuf = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test`, which builds examples",
        path.display()
    );
    Command::new(path)
}

fn run(mut cmd: Command) -> String {
    let out = common::output_within(&mut cmd, common::WATCHDOG);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pool_callbacks_prints_like_the_seed() {
    let out = run(example("pool_callbacks"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("value = ")).count(),
        6,
        "{out}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("error-value = "))
            .count(),
        4,
        "{out}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("------------------end"),
        "{out}"
    );
}

fn cpu_bound_reports_a_speedup() {
    let mut cmd = example("cpu_bound");
    cmd.arg("5000000");
    let out = run(cmd);
    assert!(out.lines().any(|l| l.starts_with("speedup:")), "{out}");
}

fn numeric_checks_pass() {
    let mut cmd = example("numeric");
    cmd.arg("1000003");
    let out = run(cmd);
    assert!(out.contains("numeric: all checks passed"), "{out}");
}

fn the_daemon_starts_refuses_a_twin_and_stops() {
    // The daemon is adopted by init; as a subreaper we adopt it instead, so
    // that we can reap it and the harness can see it if it survives.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let dir = std::env::temp_dir().join(format!("corepool-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pid_file, log) = (dir.join("d.pid"), dir.join("d.log"));
    let start = || {
        let mut cmd = example("daemon");
        cmd.args(["start", pid_file.to_str().unwrap(), log.to_str().unwrap()]);
        cmd.output().unwrap()
    };
    assert!(start().status.success());
    // "<pid> <start time>": the start time lets `stop` tell the daemon from
    // a later process that reused its pid.
    let record = std::fs::read_to_string(&pid_file).unwrap();
    let fields: Vec<u64> = record
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(fields.len(), 2, "{record:?}");
    let pid = fields[0] as i32;
    common::eventually("the daemon ticks", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tick 0"))
    });
    let twin = start();
    assert!(!twin.status.success(), "a second instance must refuse");
    assert!(String::from_utf8_lossy(&twin.stderr).contains("already running"));
    let mut stop = example("daemon");
    stop.args(["stop", pid_file.to_str().unwrap()]);
    assert!(run(stop).contains(&format!("stopped daemon pid {pid}")));
    // SAFETY: it was reparented to us: reap it.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    assert!(!pid_file.exists(), "a clean stop removes the pid file");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("stopping after"));
    std::fs::remove_dir_all(&dir).unwrap();
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
}

fn processes_reports_a_speedup() {
    let mut cmd = example("processes");
    cmd.arg("2000000");
    let out = run(cmd);
    assert!(
        out.contains("two processes:") && out.contains("speedup:"),
        "{out}"
    );
}

fn queue_pipe_moves_and_checks_its_data() {
    let mut cmd = example("queue_pipe");
    cmd.args(["20000", "2000"]);
    let out = run(cmd);
    assert!(out.contains("queue_pipe: all checks passed"), "{out}");
}

fn async_tokio_awaits_pool_results() {
    let out = run(example("async_tokio"));
    assert!(out.contains("primes below 200000: 17984"), "{out}");
    assert!(
        out.contains(
            "primes below 10000, 20000, ...: [1229, 2262, 3245, 4203, 5133, 6057, 6935, 7837]"
        ),
        "{out}"
    );
    assert!(out.contains("the runtime ticked 3 times"), "{out}");
    assert!(
        out.contains("a panicking task:") && out.contains("no 7"),
        "{out}"
    );
}

fn main() {
    common::run(common::tests![
        async_tokio_awaits_pool_results,
        pool_callbacks_prints_like_the_seed,
        cpu_bound_reports_a_speedup,
        numeric_checks_pass,
        the_daemon_starts_refuses_a_twin_and_stops,
        processes_reports_a_speedup,
        queue_pipe_moves_and_checks_its_data
    ]);
}
