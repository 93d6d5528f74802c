//! Process introspection (`current_process`, `parent_process`,
//! `active_children`) and waiting on several things at once
//! (`connection::wait`). Runs with its own `main`.

mod common;

use corepool::connection::{wait, Waitable};
use corepool::{info, Pinning, Pipe, PipeEnd, Pool, Process, ProcessInfo, ProcessKind, Queue};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn who(_: ()) -> (ProcessInfo, Option<ProcessInfo>) {
    (corepool::current_process(), corepool::parent_process())
}

/// Waits for a value on `go`, then returns: a child that ends when told.
fn until_told(go: Queue<u8>) {
    let _ = go.get();
}

fn spin(_: ()) {
    loop {
        std::hint::spin_loop();
    }
}

fn main_process_is_main() {
    let me = corepool::current_process();
    assert_eq!(me.pid, std::process::id() as i32);
    assert_eq!(me.name, "MainProcess");
    assert_eq!(me.kind, ProcessKind::Main);
    let allowed = info::allowed_cpus().unwrap();
    assert_eq!(me.cpu, (allowed.len() == 1).then(|| allowed[0]));
    assert_eq!(corepool::parent_process(), None);
}

fn a_process_child_knows_itself_and_its_parent() {
    let cpu = info::allowed_cpus().unwrap()[0];
    let p = Process::builder()
        .name("introspector")
        .cpu(cpu)
        .start(who, ())
        .unwrap();
    let pid = p.pid();
    let (me, parent) = p.join().unwrap();
    assert_eq!(me.pid, pid);
    assert_eq!(me.name, "introspector");
    assert_eq!(me.kind, ProcessKind::Process);
    assert_eq!(me.cpu, Some(cpu), "pinned before it started");
    let parent = parent.expect("a child has a parent");
    assert_eq!(parent.pid, std::process::id() as i32);
    assert_eq!(parent.name, "MainProcess");
    assert_eq!(parent.kind, ProcessKind::Main);

    // The default name, as the parent's handle reports it.
    let p = Process::start(who, ()).unwrap();
    let name = p.name().to_string();
    assert_eq!(p.join().unwrap().0.name, name);
}

/// Starts a grandchild named `name` and returns what it was told about
/// itself and its parent (this process).
fn start_grandchild(name: String) -> (ProcessInfo, Option<ProcessInfo>) {
    Process::builder()
        .name(name)
        .start(who, ())
        .unwrap()
        .join()
        .unwrap()
}

/// A name up to the documented 512 bytes arrives whole, in the child and
/// in a grandchild's `parent_process()`, NULs and multi-byte characters
/// included; a longer one is refused (before, it was cut to 1776 bytes in
/// the child while the parent's handle had it whole).
fn a_long_name_arrives_whole_and_a_too_long_one_is_refused() {
    let name = format!("{}\0{}", "é".repeat(200), "\0".repeat(111));
    assert_eq!(name.len(), 512);
    let p = Process::builder()
        .name(name.clone())
        .start(who, ())
        .unwrap();
    assert_eq!(p.name(), name);
    assert_eq!(p.join().unwrap().0.name, name, "whole in the child");
    let (grandchild, parent) = Process::builder()
        .name(name.clone())
        .start(start_grandchild, "g".into())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(grandchild.name, "g");
    let told = parent.expect("a grandchild has a parent").name;
    assert_eq!(
        told,
        name.replace('\0', "\u{FFFD}"),
        "whole in the grandchild"
    );

    for too_long in ["y".repeat(513), "y".repeat(100_000)] {
        let err = Process::builder()
            .name(too_long)
            .start(who, ())
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, corepool::Error::InvalidConfig { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("at most 512 bytes"), "{err}");
    }
}

fn a_pool_worker_knows_its_index_and_cpu() {
    let cpus = info::allowed_cpus().unwrap();
    let pool = Pool::builder()
        .workers(1)
        .pinning(Pinning::Cpus(vec![cpus[0]]))
        .build()
        .unwrap();
    let (me, parent) = pool.apply(who, ()).unwrap();
    assert_eq!(me.kind, ProcessKind::PoolWorker { index: 0 });
    assert_eq!(me.name, "PoolWorker-0");
    assert_eq!(vec![me.pid], pool.pids());
    assert_eq!(me.cpu, pool.cpus()[0]);
    assert_eq!(me.cpu, Some(cpus[0]));
    let parent = parent.expect("a worker has a parent");
    assert_eq!(parent.pid, std::process::id() as i32);
    assert_eq!(parent.kind, ProcessKind::Main);
    // A worker's pool is not a `Process` child.
    assert!(corepool::active_children().is_empty());
}

fn active_children_lists_the_running_ones() {
    let go = Queue::<u8>::new(1).unwrap();
    let running = Process::builder()
        .name("waiting")
        .start(until_told, go.clone())
        .unwrap();
    let finished = Process::builder()
        .name("finished")
        .start(|x: u8| x, 1)
        .unwrap();
    assert!(finished.join_timeout(LONG));
    let children = corepool::active_children();
    let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["waiting"]);
    assert_eq!(children[0].pid, running.pid());
    assert_eq!(children[0].kind, ProcessKind::Process);
    go.put(&1).unwrap();
    running.join().unwrap();
    assert!(corepool::active_children().is_empty());
}

fn a_daemon_whose_handle_dropped_is_not_listed() {
    let daemon = Process::builder()
        .name("daemon")
        .daemon(true)
        .start(spin, ())
        .unwrap();
    assert_eq!(corepool::active_children().len(), 1);
    // Dropping a daemon's handle kills it: from then on it is gone for the
    // program, reaped or not yet.
    drop(daemon);
    assert!(corepool::active_children().is_empty());
}

fn wait_reports_an_exited_process() {
    let go = Queue::<u8>::new(1).unwrap();
    let first = Process::start(until_told, go.clone()).unwrap();
    let second = Process::start(until_told, go.clone()).unwrap();
    let objects: [&dyn Waitable; 2] = [&first, &second];
    assert!(wait(&objects, Some(Duration::ZERO)).is_empty());
    go.put(&1).unwrap(); // one of them takes it and ends
    let ready = wait(&objects, None);
    assert_eq!(ready.len(), 1);
    let (done, other) = if ready == [0] {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert!(!done.is_alive(), "ready means reaped");
    assert!(other.is_alive());
    go.put(&1).unwrap();
    assert!(other.join_timeout(LONG));
    assert_eq!(wait(&objects, Some(Duration::ZERO)), [0, 1]);
}

fn wait_reports_a_pipe_with_a_message() {
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let (quiet, _quiet_peer) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(
        |end: PipeEnd<u64>| {
            end.send(&42).unwrap();
            // Stay until the parent answers: the pipe, not the exit, wakes it.
            let _ = end.recv();
        },
        theirs,
    )
    .unwrap();
    let objects: [&dyn Waitable; 2] = [&quiet, &mine];
    assert_eq!(wait(&objects, None), [1]);
    assert_eq!(mine.recv().unwrap(), 42);
    mine.send(&0).unwrap();
    child.join().unwrap();
    // Its peer process ended, so the stream has: ready again.
    assert_eq!(wait(&objects, Some(LONG)), [1]);
}

fn wait_reports_a_queue_with_a_value() {
    let empty = Queue::<u64>::new(4).unwrap();
    let q = Queue::<u64>::new(4).unwrap();
    let child = Process::start(|q: Queue<u64>| q.put(&9).unwrap(), q.clone()).unwrap();
    let objects: [&dyn Waitable; 2] = [&empty, &q];
    assert_eq!(wait(&objects, None), [1]);
    assert_eq!(q.get().unwrap(), 9);
    child.join().unwrap();
}

fn wait_times_out_with_nothing_ready() {
    let q = Queue::<u64>::new(4).unwrap();
    let (a, _b) = Pipe::duplex::<u64>().unwrap();
    let go = Queue::<u8>::new(1).unwrap();
    let p = Process::start(until_told, go.clone()).unwrap();
    let objects: [&dyn Waitable; 3] = [&q, &a, &p];
    assert!(wait(&objects, Some(Duration::from_millis(20))).is_empty());
    assert!(wait(&objects, Some(Duration::ZERO)).is_empty());
    go.put(&1).unwrap();
    p.join().unwrap();
}

fn a_process_killed_while_waited_on_is_ready() {
    let p = Process::start(spin, ()).unwrap();
    let q = Queue::<u64>::new(4).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| wait(&[&q as &dyn Waitable, &p], None));
        p.kill().unwrap();
        assert_eq!(waiter.join().unwrap(), [1]);
    });
    assert!(!p.is_alive());
    assert_eq!(p.exit_code(), Some(corepool::ExitCause::Signal(9)));
}

fn main() {
    corepool::init();
    // The process thread's eventfd lives for the program: create it before
    // the harness takes its descriptor baseline.
    Process::start(|x: u64| x, 0).unwrap().join().unwrap();
    common::run(common::tests![
        main_process_is_main,
        a_process_child_knows_itself_and_its_parent,
        a_long_name_arrives_whole_and_a_too_long_one_is_refused,
        a_pool_worker_knows_its_index_and_cpu,
        active_children_lists_the_running_ones,
        a_daemon_whose_handle_dropped_is_not_listed,
        wait_reports_an_exited_process,
        wait_reports_a_pipe_with_a_message,
        wait_reports_a_queue_with_a_value,
        wait_times_out_with_nothing_ready,
        a_process_killed_while_waited_on_is_ready,
    ]);
}
