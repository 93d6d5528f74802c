//! Pipe ends in transit: an end whose carrier never delivers it (a pool task
//! cancelled or failed before a worker decoded it) comes back, so that its
//! peer sees end of stream; an end handed on over several processes is never
//! closed under its holder by a late marking of an earlier hop. Runs with its
//! own `main`.

mod common;

use corepool::{Encoder, Error, Pipe, PipeEnd, Pool, Process, Wire};

/// Blocks its worker until the test sends on (or drops) the other end.
fn wait_for_the_gate(gate: PipeEnd<u64>) -> u64 {
    gate.recv().unwrap_or(0)
}

/// Never runs in these tests: its task is cancelled first.
fn hold(end: PipeEnd<u64>) -> u64 {
    end.send(&1).map_or(0, |()| 1)
}

fn an_end_sent_with_a_cancelled_task_ends_the_stream() {
    let pool = Pool::new(1).unwrap();
    let (gate, gate_theirs) = Pipe::duplex::<u64>().unwrap();
    let blocker = pool.apply_async(wait_for_the_gate, gate_theirs).unwrap();
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    // Queued behind the blocker on the only worker: never decoded. The
    // sender's copy is dropped here, moved into the task.
    let never_runs = pool.apply_async(hold, theirs).unwrap();
    pool.terminate();
    assert!(matches!(never_runs.get(), Err(Error::Cancelled)));
    assert!(blocker.get().is_err());
    // Not in transit for ever: back to the sender, who no longer has it, so
    // closed on its behalf (the harness's watchdog fails a hang).
    assert!(matches!(mine.recv(), Err(Error::EndOfStream)));
    assert!(mine.poll(std::time::Duration::ZERO).unwrap());
    assert!(matches!(mine.send(&1), Err(Error::EndOfStream)));
    drop(gate);
}

/// Encodes fine, never decodes: a task argument that fails in the worker
/// before anything after it is decoded.
struct Undecodable;

impl Wire for Undecodable {
    fn encode(&self, out: &mut Encoder) {
        out.push(0);
    }

    fn decode(_: &mut &[u8]) -> corepool::Result<Self> {
        Err(Error::Decode {
            type_name: "Undecodable",
            reason: "never decodes".into(),
        })
    }
}

fn hold_after(arg: (Undecodable, PipeEnd<u64>)) -> u64 {
    hold(arg.1)
}

fn an_end_sent_with_a_task_failing_before_decode_ends_the_stream() {
    let pool = Pool::new(1).unwrap();
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let failed = pool.apply_async(hold_after, (Undecodable, theirs)).unwrap();
    assert!(failed.get().is_err(), "its argument cannot be decoded");
    assert!(matches!(mine.recv(), Err(Error::EndOfStream)));
    drop(pool);
}

/// Never encodes: the value beside it is never sent.
struct Unencodable;

impl Wire for Unencodable {
    fn encode(&self, out: &mut Encoder) {
        out.fail::<Self>("never encodes");
    }

    fn decode(_: &mut &[u8]) -> corepool::Result<Self> {
        Ok(Self)
    }
}

fn an_end_whose_encoding_failed_is_still_its_senders() {
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let pair = (theirs, Unencodable);
    let q = corepool::Queue::<(PipeEnd<u64>, Unencodable)>::new(1).unwrap();
    assert!(matches!(q.put(&pair), Err(Error::Encode { .. })));
    let (theirs, _) = pair;
    // Nothing was sent: this copy still holds the end, and closes it.
    theirs.send(&5).unwrap();
    assert_eq!(mine.recv().unwrap(), 5);
    drop(theirs);
    assert!(matches!(mine.recv(), Err(Error::EndOfStream)));
}

const WRITES: u64 = 3;

/// The grandchild: writes `WRITES` values, as many as the pipe takes.
fn write_all(end: PipeEnd<u64>) -> u64 {
    (0..WRITES).take_while(|i| end.send(i).is_ok()).count() as u64
}

/// The child: hands the end on at once, then waits for the grandchild.
fn relay(end: PipeEnd<u64>) -> u64 {
    Process::start(write_all, end).unwrap().join().unwrap()
}

fn an_end_handed_on_twice_is_never_closed_early() {
    let mut early = 0;
    for _ in 0..60 {
        let (rx, tx) = Pipe::one_way::<u64>().unwrap();
        let child = Process::start(relay, tx).unwrap();
        let mut got = Vec::new();
        let end = loop {
            match rx.recv() {
                Ok(v) => got.push(v),
                Err(e) => break e,
            }
        };
        assert!(matches!(end, Error::EndOfStream), "{end:?}");
        let written = child.join().unwrap();
        if got.len() as u64 != WRITES || written != WRITES {
            early += 1;
        }
    }
    assert_eq!(early, 0, "runs where the end was closed under its holder");
}

/// Holds its end (decoded: it says so) until it is killed.
fn hold_until_killed(end: PipeEnd<u64>) -> u64 {
    end.send(&1).unwrap();
    end.recv().unwrap_or(0)
}

fn an_end_held_by_a_reaped_child_is_closed_without_its_start_time() {
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(hold_until_killed, theirs).unwrap();
    assert_eq!(mine.recv().unwrap(), 1, "the child decoded its end");
    // As if its start time could not be read: judged by pid alone, a dead
    // holder whose pid another process reused would look alive for ever.
    corepool::testing::forget_peer_tag(&mine);
    assert!(!corepool::testing::peer_is_closed(&mine));
    child.kill().unwrap();
    assert!(child.join().is_err(), "killed");
    // Its parent knows for certain that it died: the end it held was closed
    // on its behalf when it was reaped, before `join` saw it end, without
    // anyone asking /proc about its pid.
    assert!(corepool::testing::peer_is_closed(&mine));
    assert!(matches!(mine.recv(), Err(Error::EndOfStream)));
}

fn main() {
    corepool::init();
    // The process thread's eventfd lives for the program: create it before
    // the harness takes its descriptor baseline.
    Process::start(|x: u64| x, 0).unwrap().join().unwrap();
    common::run(common::tests![
        an_end_sent_with_a_cancelled_task_ends_the_stream,
        an_end_sent_with_a_task_failing_before_decode_ends_the_stream,
        an_end_whose_encoding_failed_is_still_its_senders,
        an_end_handed_on_twice_is_never_closed_early,
        an_end_held_by_a_reaped_child_is_closed_without_its_start_time,
    ]);
}
