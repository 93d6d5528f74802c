//! Ending a child process together with every process it started (the
//! Python baseline and its `multiprocessing` workers), as read from `/proc`.
//!
//! A tree is killed frozen: every process is stopped (SIGSTOP) from the root
//! down before any is killed. A stopped process cannot fork, so no new
//! worker appears behind our back (`multiprocessing.Pool` replaces workers
//! that exit), and it cannot reap its children, so a child's pid read from
//! `/proc` still names that child, never a process that reused the number,
//! when the SIGKILL is sent. The kills then go deepest first, the root last:
//! a parent killed before its children would hand them to init, out of
//! reach.
//!
//! The caller must keep the root unreaped throughout (it is our child), so
//! that its own pid is ours too.

use std::time::{Duration, Instant};

/// How long one process may take to stop before the kill goes ahead anyway
/// (a process in an uninterruptible sleep stops only when it leaves it).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A process's state letters from `/proc/<pid>/task/*/stat` (one per
/// thread), and its parent; `None` when it is gone.
fn threads_and_parent(pid: u32) -> Option<(Vec<char>, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, ppid) = state_and_parent(&stat)?;
    let mut states = vec![state];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path().join("stat");
            if let Some((s, _)) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| state_and_parent(&t))
            {
                states.push(s);
            }
        }
    }
    Some((states, ppid))
}

/// The state letter and the parent's pid from a `stat` line.
fn state_and_parent(stat: &str) -> Option<(char, u32)> {
    // The command may contain spaces and ')': the fields follow the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether every thread of `pid` is stopped, or the process has ended (a
/// zombie, or gone): either way it can no longer fork or reap.
fn is_still(pid: u32) -> bool {
    threads_and_parent(pid).is_none_or(|(states, _)| {
        states
            .iter()
            .all(|s| matches!(s, 'T' | 't' | 'Z' | 'X' | 'x'))
    })
}

/// The processes whose parent is `pid`.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&child| threads_and_parent(child).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Sends SIGSTOP to `pid` and waits (at most [`STOP_WAIT`]) until it is
/// still. Polls: a stop takes effect when the process next runs.
fn freeze(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if crate::sys::kill(raw, libc::SIGSTOP).is_err() {
        return; // gone already
    }
    let deadline = Instant::now() + STOP_WAIT;
    while !is_still(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills `root` and every process below it: freezes them all from the root
/// down, then SIGKILLs them deepest first, `root` last. Best effort: a
/// process that is gone already is skipped. `root` must be our unreaped
/// child. Does not reap `root`.
pub(crate) fn kill_tree(root: u32) {
    // Breadth first: each process is frozen before its children are
    // listed, so the list is complete and stays true.
    let mut order = vec![root];
    freeze(root);
    let mut next = 0;
    while next < order.len() {
        for child in children_of(order[next]) {
            if !order.contains(&child) {
                freeze(child);
                order.push(child);
            }
        }
        next += 1;
    }
    for &pid in order.iter().rev() {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = crate::sys::kill(raw, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_are_read_after_the_last_parenthesis() {
        let line = "123 (py) (x) S) S 77 123 123 0 -1";
        assert_eq!(state_and_parent(line), Some(('S', 77)));
        assert_eq!(state_and_parent("garbage"), None);
    }

    #[test]
    fn a_tree_that_forks_is_killed_whole() {
        // A shell that keeps starting children, each with a child of its
        // own: the frozen kill leaves none of them.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "while :; do sh -c 'sleep 1000 & sleep 1000' & sleep 0.01; done",
            ])
            .spawn()
            .unwrap();
        let root = child.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Wait (with a watchdog) until there are grandchildren to kill.
        let grandchildren = loop {
            let g: Vec<u32> = children_of(root)
                .into_iter()
                .flat_map(children_of)
                .collect();
            if !g.is_empty() {
                break g;
            }
            assert!(Instant::now() < deadline, "the tree never grew");
            std::thread::sleep(Duration::from_millis(5));
        };
        let children = children_of(root);
        kill_tree(root);
        let status = child.wait().unwrap();
        assert!(!status.success());
        // Every process we saw is gone or a zombie waiting for init.
        for pid in children.iter().chain(&grandchildren) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while threads_and_parent(*pid).is_some_and(|(s, _)| !matches!(s[0], 'Z' | 'X' | 'x')) {
                assert!(Instant::now() < deadline, "{pid} survived");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
