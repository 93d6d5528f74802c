//! `corepool soak` end to end: checkable tasks while workers are killed lose
//! nothing, and a soak killed outright leaves no process and no `/dev/shm`
//! entry behind. Runs with its own `main` under the library's test harness.

#[path = "../../tests/common/mod.rs"]
mod common;

fn soak_under_chaos_loses_nothing() {
    let out = common::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_corepool")).args([
            "soak",
            "--tasks",
            "20000",
            "--work",
            "20000",
            "--kill-every-ms",
            "10",
            "--json",
        ]),
        common::WATCHDOG,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let summary: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(summary["lost"], 0, "{last}");
    assert_eq!(summary["wrong"], 0, "{last}");
    assert_eq!(summary["submitted"], 20000, "{last}");
    for key in ["ok", "worker_died", "respawned"] {
        assert!(summary[key].is_u64(), "{key} missing: {last}");
    }
}

/// The summary of a `soak --json` run that must have passed.
fn passing_summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
}

fn the_killer_does_not_outlive_the_work() {
    // A kill interval far longer than the work (u64::MAX ms: for ever) used
    // to be slept out after the last task, and counted in the throughput:
    // now the run ends with its work, under the watchdog, and no kill was
    // sent (the first would have come after the work).
    let out = common::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_corepool")).args([
            "soak",
            "--tasks",
            "1000",
            "--kill-every-ms",
            "18446744073709551615",
            "--json",
        ]),
        common::WATCHDOG,
    );
    let summary = passing_summary(&out);
    assert_eq!(summary["kills_sent"], 0, "{summary}");
    assert_eq!(summary["ok"], 1000, "{summary}");
}

/// This child's (user + system) CPU ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat(5), counted after the command.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// A process's state letter (`R`, `S`, `T`, ...), from `/proc/PID/stat`.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn a_stopped_worker_does_not_keep_the_summary_back() {
    use std::io::Read;
    let mut soak = std::process::Command::new(env!("CARGO_BIN_EXE_corepool"))
        .args(["soak", "--tasks", "200000", "--workers", "2", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let soak_pid = soak.id();
    // Signals go to our unreaped child and to its children while it lives:
    // none of these pids can have been reused.
    let signal = |pid: u32, sig: i32| {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid as i32, sig) };
    };
    // A worker is a child that has run tasks (the fork server, a child too,
    // stays idle): the busiest child.
    let mut busiest = 0;
    common::eventually("a soak worker ran tasks", || {
        let children = common::descendants_of(soak_pid);
        busiest = children
            .iter()
            .copied()
            .max_by_key(|&c| cpu_ticks(c))
            .unwrap_or(0);
        busiest != 0 && cpu_ticks(busiest) > 0
    });
    // Stopped mid-task, the worker would hold that task until the soak's
    // per-task watchdog (120 s) counted it lost: stop it idle instead. With
    // the soak itself stopped, the workers finish what they hold and sleep
    // waiting for more (a task never sleeps: it is a busy loop).
    signal(soak_pid, libc::SIGSTOP);
    common::eventually("the worker went idle", || state(busiest) == Some('S'));
    signal(busiest, libc::SIGSTOP);
    common::eventually("the worker stopped", || state(busiest) == Some('T'));
    signal(soak_pid, libc::SIGCONT);
    // The other worker (and the pool's rebalancing) finishes the tasks; the
    // summary must come and the soak must end, the stopped worker killed.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut stdout = soak.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = done_tx.send(());
        text
    });
    let ended = done_rx
        .recv_timeout(std::time::Duration::from_secs(100))
        .is_ok();
    if !ended {
        // Let the test fail rather than hang: wake the worker, end the soak.
        signal(busiest, libc::SIGCONT);
        let _ = soak.kill();
    }
    let status = soak.wait().unwrap();
    let text = reader.join().unwrap();
    assert!(ended, "the soak hung on a stopped worker: {text}");
    let last = text.lines().last().expect("a summary line");
    let summary: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(summary["submitted"], 200000, "{last}");
    assert!(status.code().is_some(), "exited by itself: {status:?}");
    common::eventually("the stopped worker was killed", || {
        common::is_gone(busiest as i32)
    });
}

fn a_killed_soak_leaves_nothing_behind() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let shm_before = common::shm_entries();
    let ours_before: Vec<u32> = common::children().iter().map(|&(pid, _)| pid).collect();
    let mut soak = std::process::Command::new(env!("CARGO_BIN_EXE_corepool"))
        .args(["soak", "--tasks", "100000000", "--json"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let soak_pid = soak.id();
    // Wait until its workers exist, then kill the parent outright.
    common::eventually("soak workers started", || {
        common::descendants_of(soak_pid).len() >= 2
    });
    let workers = common::descendants_of(soak_pid);
    soak.kill().unwrap();
    soak.wait().unwrap();
    // Its workers, and its fork server (the default start method's, which
    // may have started after `workers` was read), were reparented to us.
    let orphans: Vec<u32> = common::children()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| !ours_before.contains(pid))
        .collect();
    common::eventually("soak's workers and fork server died with it", || {
        workers
            .iter()
            .chain(&orphans)
            .all(|&w| common::is_gone(w as i32))
    });
    for w in workers.into_iter().chain(orphans) {
        // Reparented to us (subreaper): reap.
        // SAFETY: waitpid on a specific pid.
        unsafe { libc::waitpid(w as i32, std::ptr::null_mut(), 0) };
    }
    assert!(
        common::shm_entries().is_subset(&shm_before),
        "nothing left in /dev/shm"
    );
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
}

fn main() {
    common::run(common::tests![
        soak_under_chaos_loses_nothing,
        a_killed_soak_leaves_nothing_behind,
        the_killer_does_not_outlive_the_work,
        a_stopped_worker_does_not_keep_the_summary_back,
    ]);
}
