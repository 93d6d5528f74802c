//! Unit tests of the parent's state machine that need no worker process:
//! a `Core` over a real segment, with stand-in processes for its workers.

use super::*;
use crate::pool::layout::Layout;
use crate::shm::Segment;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};

/// A one-worker `Core` and the segment its slot points into.
struct Fixture {
    // Declared first, dropped first: the slot points into `_seg`.
    core: Core,
    _seg: Segment,
}

fn fixture(start_timeout: Option<Duration>) -> Fixture {
    let layout = Layout::new(1, 4096, 4096, 0).unwrap();
    let seg = Segment::create(c"corepool-core-test", layout.slot_bytes).unwrap();
    let slot = Slot::new(&seg, &layout).unwrap();
    let policy = FaultPolicy {
        max_tasks_per_child: 0,
        retries: 0,
        task_timeout: None,
        start_timeout,
        max_queued: usize::MAX,
    };
    let core = Core::new(vec![Worker::new(slot, None, u64::MAX)], policy);
    Fixture { core, _seg: seg }
}

/// A live process leading its own process group: it stands for an
/// unrelated process that was given a reaped worker's pid.
fn bystander() -> Child {
    Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .unwrap()
}

/// The pidfd of a process that has exited and been reaped: what the parent
/// holds for a worker the supervisor reaped after the parent's last look.
fn reaped_pidfd() -> Arc<OwnedFd> {
    let mut child = Command::new("true").spawn().unwrap();
    let pidfd = crate::sys::pidfd_open(child.id() as i32).unwrap();
    child.wait().unwrap();
    Arc::new(pidfd)
}

/// Ends `bystander` with SIGTERM and checks that SIGTERM is what ended it:
/// a SIGKILL sent earlier (by the code under test) would have won, since a
/// pending SIGKILL ends the process before any later signal.
fn assert_untouched(mut bystander: Child) {
    let pidfd = crate::sys::pidfd_open(bystander.id() as i32).unwrap();
    crate::sys::pidfd_send_signal(pidfd.as_fd(), crate::sys::Signal::TERM);
    let status = bystander.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(crate::sys::Signal::TERM.as_raw()),
        "the process that reused the pid was signalled: {status:?}"
    );
}

/// Makes the slot look like it runs `pid` (`phase`), through `pidfd`.
fn pretend_running(core: &mut Core, phase: Phase, pid: i32, pidfd: Arc<OwnedFd>) {
    let w = &mut core.workers[0];
    w.pid = pid;
    w.pidfd = Some(pidfd);
    w.phase = phase;
    w.starting_since = Some(Instant::now());
}

#[test]
#[cfg_attr(miri, ignore = "Miri starts no processes")]
fn terminate_never_signals_a_process_that_reused_a_reaped_workers_pid() {
    let mut f = fixture(None);
    let other = bystander();
    pretend_running(&mut f.core, Phase::Ready, other.id() as i32, reaped_pidfd());
    f.core.terminate(&mut Actions::default());
    assert_eq!(f.core.workers[0].phase, Phase::Dying);
    assert_untouched(other);
}

#[test]
#[cfg_attr(miri, ignore = "Miri starts no processes")]
fn a_start_timeout_never_signals_a_process_that_reused_a_reaped_workers_pid() {
    let mut f = fixture(Some(Duration::ZERO));
    let other = bystander();
    pretend_running(
        &mut f.core,
        Phase::Starting,
        other.id() as i32,
        reaped_pidfd(),
    );
    f.core.check_start_timeouts(&mut Actions::default());
    assert_eq!(f.core.workers[0].phase, Phase::Dying, "the timeout fired");
    assert_untouched(other);
}

#[test]
#[cfg_attr(miri, ignore = "Miri starts no processes")]
fn a_spawn_seen_after_terminate_never_signals_a_process_that_reused_its_pid() {
    let mut f = fixture(None);
    f.core.terminate(&mut Actions::default());
    let other = bystander();
    let event = Event::Spawned {
        index: 0,
        pid: other.id() as i32,
        pidfd: reaped_pidfd(),
    };
    f.core.on_event(event, &mut Actions::default());
    assert_eq!(f.core.workers[0].phase, Phase::Dying);
    assert_untouched(other);
}

#[test]
#[cfg_attr(miri, ignore = "Miri starts no processes")]
fn a_kill_reaches_the_worker_through_its_pidfd() {
    let mut f = fixture(None);
    let mut worker = bystander();
    let pidfd = Arc::new(crate::sys::pidfd_open(worker.id() as i32).unwrap());
    pretend_running(&mut f.core, Phase::Ready, worker.id() as i32, pidfd);
    f.core.terminate(&mut Actions::default());
    let status = worker.wait().unwrap();
    assert_eq!(status.signal(), Some(crate::sys::SIGKILL));
}

#[test]
fn a_task_is_small() {
    // See `Task`: queued by the hundred thousand, and moved between cores.
    assert!(std::mem::size_of::<TaskArg>() <= 24);
    assert!(std::mem::size_of::<Task>() <= 80);
    let arg = TaskArg::new(Payload::from_slice(&[7; TaskArg::INLINE]));
    assert!(matches!(arg, TaskArg::Inline { .. }));
    assert_eq!(arg.bytes(), &[7; TaskArg::INLINE]);
    let arg = TaskArg::new(Payload::from_slice(&[8; TaskArg::INLINE + 1]));
    assert!(matches!(arg, TaskArg::Boxed(_)));
    assert_eq!(arg.bytes(), &[8; TaskArg::INLINE + 1]);
    assert_eq!(TaskArg::new(Payload::default()).bytes(), &[] as &[u8]);
}

/// A worker's window follows its published measure of its tasks, within
/// bounds whatever the (worker-written) word says.
#[test]
fn a_workers_window_is_about_a_millisecond_of_its_tasks_and_bounded() {
    use super::tasks::{window_for, DEFAULT_WINDOW};
    assert_eq!(window_for(0), DEFAULT_WINDOW, "not measured yet");
    assert_eq!(window_for(1), 1024, "tiny tasks: the most");
    assert_eq!(window_for(200), 1024);
    assert_eq!(window_for(5_000), 200, "5 µs tasks: a millisecond's worth");
    assert_eq!(window_for(100_000), 10);
    assert_eq!(window_for(1_000_000), 4, "long tasks: the fewest");
    assert_eq!(window_for(u64::MAX), 4);
}

/// A completion that drops every outcome, for tasks whose outcome the test
/// reads from `Actions`.
struct Nop;
impl crate::pool::sink::Completion for Nop {
    fn complete(&self, _tag: u64, _outcome: crate::pool::sink::Outcome) {}
}

/// A one-worker `Core` with a 1 ms task timeout whose worker is `pid` (a
/// stand-in), with `tasks` tasks pushed to its ring.
fn timing_fixture(pid: i32, tasks: usize) -> Fixture {
    let mut f = fixture(None);
    f.core.task_timeout = Some(Duration::from_millis(1));
    let pidfd = Arc::new(crate::sys::pidfd_open(pid).unwrap());
    pretend_running(&mut f.core, Phase::Ready, pid, pidfd);
    let target: Arc<dyn crate::pool::sink::Completion> = Arc::new(Nop);
    for _ in 0..tasks {
        let sink = crate::pool::sink::Sink::shared(target.clone(), 0);
        f.core.submit(0, Payload::default(), sink, None, None);
    }
    f.core.dispatch(&mut Actions::default());
    assert_eq!(f.core.workers[0].in_flight.len(), tasks);
    f
}

/// Marks every task in the worker's ring TAKEN, as a worker that started
/// them would, and has the front look as if it ran for a second.
fn take_all_and_overrun(core: &mut Core) {
    let w = &mut core.workers[0];
    let ring = w.tasks.memory();
    for f in &w.in_flight {
        ring.record_kind(f.position)
            .unwrap()
            .store(kind::TAKEN, Ordering::Release);
    }
    let first = w.in_flight[0].id;
    w.running = Some((first, Instant::now() - Duration::from_secs(1)));
}

/// A worker that starts the task behind its overdue one without answering
/// the overdue one broke the protocol: it is killed as a violation and its
/// tasks fail with `ProtocolViolation`. It escaped its timeout before, and
/// the timeout check asked to run again at once, for ever: a driver that
/// spun at 100 % (review 28, A-B1).
#[test]
#[cfg_attr(miri, ignore = "Miri starts no processes")]
fn a_worker_that_starts_a_task_before_answering_the_overdue_one_is_a_violation() {
    let mut other = bystander();
    let mut f = timing_fixture(other.id() as i32, 2);
    take_all_and_overrun(&mut f.core);
    let mut actions = Actions::default();
    f.core.check_timeouts(&mut actions);
    let phase = f.core.workers[0].phase;
    let violated = f.core.workers[0].violated;
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(phase, Phase::Dying, "killed at its first overdue look");
    assert!(violated, "as a protocol violation, not a timeout");
    assert_eq!(f.core.workers[0].timed_out, None);
    assert_eq!(actions.completions.len(), 2, "both of its tasks fail");
    for (_, outcome) in &actions.completions {
        assert!(
            matches!(outcome, Outcome::Err(Error::ProtocolViolation { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(f.core.next_deadline(), None, "nothing left to look at");
}

/// The submission path times what it pushed but neither collects nor
/// kills (it may run on the callback thread): an overdue task keeps its
/// deadline, past, for the driver, whose pass does the kill (review 28,
/// A-R1).
#[test]
#[cfg_attr(miri, ignore = "Miri starts no processes")]
fn the_submission_path_leaves_a_timeout_kill_to_the_driver() {
    let mut other = bystander();
    let mut f = timing_fixture(other.id() as i32, 1);
    take_all_and_overrun(&mut f.core);
    let mut actions = Actions::default();
    f.core.dispatch_pending(&mut actions);
    let after_submission = f.core.workers[0].phase;
    let deadline = f.core.next_deadline();
    let mut actions = Actions::default();
    f.core.check_timeouts(&mut actions);
    let after_driver = f.core.workers[0].phase;
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(
        after_submission,
        Phase::Ready,
        "no kill on the submission path"
    );
    assert!(
        deadline.is_some_and(|d| d <= Instant::now()),
        "the driver looks at once"
    );
    assert_eq!(after_driver, Phase::Dying, "the driver's pass kills it");
    let w = &f.core.workers[0];
    assert_eq!(w.timed_out, Some(w.in_flight[0].id), "for its timeout");
}

/// A replacement worker starts with the default window and an unmeasured
/// slot, not its predecessor's measure (review 28, B-R1).
#[test]
fn a_replacement_starts_with_the_default_window() {
    use super::tasks::DEFAULT_WINDOW;
    let mut f = fixture(None);
    let w = &mut f.core.workers[0];
    w.window = 1024;
    w.slot.task_ns().store(1, Ordering::Relaxed);
    w.reset(u64::MAX);
    assert_eq!(w.window, DEFAULT_WINDOW);
    assert_eq!(w.slot.task_ns().load(Ordering::Relaxed), 0);
}

/// A receiver that copies every successful answer out of the ring, as
/// `imap_unordered`'s channel queues a chunk's values.
struct Absorbs(std::sync::atomic::AtomicUsize);

impl crate::pool::sink::Completion for Absorbs {
    fn complete(&self, _tag: u64, _outcome: crate::pool::sink::Outcome) {}
    fn absorb(&self, _tag: u64, _ring: &Consumer, _record: &Claimed) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The answer of a task killed for its timeout, arriving between the
/// decision and the kill, is `TaskTimedOut` and is never copied into its
/// receiver: `imap_unordered` queued those values and handed them out as
/// the next chunk's, losing that chunk's own (final read of stop 26).
#[test]
#[cfg_attr(miri, ignore = "Miri starts no processes")]
fn an_overdue_answer_is_not_absorbed_into_its_receiver() {
    let mut other = bystander();
    let mut f = timing_fixture(other.id() as i32, 0);
    let absorbs = Arc::new(Absorbs(std::sync::atomic::AtomicUsize::new(0)));
    let target: Arc<dyn crate::pool::sink::Completion> = absorbs.clone();
    f.core.submit(
        0,
        Payload::default(),
        crate::pool::sink::Sink::shared(target, 0),
        None,
        None,
    );
    f.core.dispatch(&mut Actions::default());
    take_all_and_overrun(&mut f.core);
    let w = &mut f.core.workers[0];
    let id = w.in_flight[0].id;
    // The pool has decided to kill it for its timeout; its answer lands.
    w.timed_out = Some(id);
    let mut results = Producer::new(w.results.memory());
    let header = crate::shm::ring::RecordHeader {
        kind: kind::OK,
        id,
        ..Default::default()
    };
    results.write(header, &7u64.to_le_bytes()).unwrap().unwrap();
    results.publish().unwrap();
    let mut actions = Actions::default();
    f.core.collect_results(0, &mut actions);
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(absorbs.0.load(Ordering::Relaxed), 0, "absorbed");
    assert_eq!(actions.completions.len(), 1);
    assert!(
        matches!(
            actions.completions[0].1,
            Outcome::Err(Error::TaskTimedOut { .. })
        ),
        "{:?}",
        actions.completions[0].1
    );
}
