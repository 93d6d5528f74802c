//! Multi-rank tests: this executable launches `mpirun -n 2` (or 3) on
//! itself with a scenario name, and each rank runs that scenario. Every
//! launch runs under a watchdog: a job that hangs fails the test instead of
//! hanging it.
//!
//! The launcher is `$COREPOOL_MPIRUN` (default `mpirun`): Open MPI's or
//! MPICH's (Hydra), told apart by its `--version`, which also decides its
//! flags and how it reports a dead rank. It must belong to the MPI this
//! binary links (checked first): for MPICH beside Open MPI on Debian,
//! `MPICC=mpicc.mpich COREPOOL_MPIRUN=mpirun.mpich cargo test -p
//! corepool-mpi` in a target directory of its own.

#[path = "../../tests/common/mod.rs"]
mod common;

use corepool::{Callbacks, Error};
use corepool_mpi::{Cluster, Shard};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The marker that tells a rank from the test driver.
const RANK_PROGRAM: &str = "--rank-program";
/// Longest a job may take before the watchdog fails the test.
const WATCHDOG: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(RANK_PROGRAM) {
        let scenario = args.get(2).cloned().unwrap_or_default();
        if let Err(e) = rank_program(&scenario) {
            eprintln!("scenario {scenario} failed: {e}");
            std::process::exit(2);
        }
        return;
    }
    driver();
}

// ---------------------------------------------------------------- ranks

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Busy for a while, then says which rank process ran it.
fn where_am_i(spin: u64) -> i32 {
    let mut x = 0u64;
    for i in 0..spin {
        x = std::hint::black_box(x.wrapping_add(i));
    }
    corepool::parent_process().map_or(-1, |p| p.pid)
}

fn fail_on_seven(x: u64) -> u64 {
    assert!(x != 7, "seven is not allowed");
    x
}

/// An argument whose encoder panics (on rank 0's MPI thread, which encodes
/// each task for the rank it goes to).
struct PanicsWhenEncoded;

impl corepool::Wire for PanicsWhenEncoded {
    fn encode(&self, _: &mut corepool::Encoder) {
        panic!("deliberate panic in an encoder");
    }

    fn decode(_: &mut &[u8]) -> corepool::Result<Self> {
        Ok(Self)
    }
}

fn never_runs(_: PanicsWhenEncoded) -> u64 {
    0
}

fn rank_pids((shard, ()): (Shard, ())) -> (u64, i32, i32) {
    let rank_pid = corepool::parent_process().map_or(-1, |p| p.pid);
    (shard.rank as u64, rank_pid, std::process::id() as i32)
}

fn die_on_rank_1((shard, ()): (Shard, ())) -> u64 {
    if shard.rank == 1 {
        // SAFETY: `raise` has no preconditions; the worker is meant to die.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    shard.rank as u64
}

/// Never returns on rank 1 (until its pool's `task_timeout` kills it).
fn spin_on_rank_1((shard, ()): (Shard, ())) -> u64 {
    if shard.rank == 1 {
        spin_forever(0);
    }
    shard.rank as u64
}

/// The length of a broadcast as a task sees it.
fn broadcast_len((_, b): (Shard, corepool_mpi::Broadcast<f64>)) -> u64 {
    b.len() as u64
}

fn sum_rows((shard, (a, n)): (Shard, (corepool_mpi::Broadcast<f64>, u64))) -> f64 {
    let n = n as usize;
    let rows = shard.range_of(n);
    a.fold_chunks(rows.start * n..rows.end * n, 0.0, |s, xs| {
        s + xs.iter().sum::<f64>()
    })
    .unwrap()
}

fn element((a, i): (corepool_mpi::Broadcast<f64>, u64)) -> f64 {
    a.get(i as usize).unwrap_or(f64::NAN)
}

/// The argument's checksum, and whether this worker has its pool's
/// argument arena mapped (a large argument is received straight into it).
fn sum_in_arena(v: Vec<u8>) -> (u64, bool) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    (
        v.iter().map(|&b| u64::from(b)).sum(),
        maps.contains("memfd:corepool-arena"),
    )
}

/// `len` bytes of a pattern that depends on `seed`.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + seed) % 251) as u8).collect()
}

fn checksum(v: Vec<u8>) -> (u64, u64) {
    (v.len() as u64, v.iter().map(|&b| u64::from(b)).sum())
}

/// A large result: [`pattern`]`(len, seed)`.
fn make_pattern((len, seed): (u64, u64)) -> Vec<u8> {
    pattern(len as usize, seed as usize)
}

/// The piece size of the `pieces` scenario: small, and odd, so that every
/// message of more than 64 KiB goes in pieces, with a short last one.
const SMALL_PIECE: usize = (64 << 10) + 3;

/// This rank's number from the launcher's environment (Open MPI's, or
/// MPICH's Hydra's), before `Cluster::init`: a configuration may differ by
/// rank.
fn launcher_rank() -> usize {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The argument of the `grace_progress` scenario: large enough that its
/// pieces (of the smallest size) take longer to go than the grace there.
const GRACE_ARGUMENT: usize = 256 << 20;
/// The grace of the `grace_progress` scenario: well under its drop's wait
/// (6-7 s here in a debug build), and long enough for what rank 1 does
/// between the last piece and its answer, when nothing moves (copy the
/// argument to its arena, end its pool) on a loaded machine (500 ms
/// failed once under load).
const SHORT_GRACE: Duration = Duration::from_secs(2);

/// An argument whose encoder panics for 13 (and only then).
#[derive(Debug)]
struct Fuse(u64);

impl corepool::Wire for Fuse {
    fn encode(&self, out: &mut corepool::Encoder) {
        assert_ne!(self.0, 13, "thirteen does not encode");
        self.0.encode(out);
    }

    fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
        let v = u64::decode(input)?;
        assert_ne!(v, 14, "fourteen does not decode");
        Ok(Self(v))
    }
}

fn fuse_value(f: Fuse) -> u64 {
    f.0
}

fn fuse_of(x: u64) -> Fuse {
    Fuse(x)
}

fn fuse_plus((f, x): (Fuse, u64)) -> u64 {
    f.0 + x
}

/// `result` is the `Encode` (or `Decode`) error naming `type_part` and
/// quoting `quote`, the panic's message.
fn wire_error<T: std::fmt::Debug>(
    result: corepool::Result<T>,
    decode: bool,
    type_part: &str,
    quote: &str,
    what: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let (kind_ok, name) = match &result {
        Err(Error::Encode { type_name, .. }) => (!decode, *type_name),
        Err(Error::Decode { type_name, .. }) => (decode, *type_name),
        _ => (false, ""),
    };
    let text = result
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    check(
        kind_ok && name.contains(type_part) && text.contains(quote),
        &format!(
            "{what}: wanted an error naming {type_part} and quoting {quote:?}, got {result:?}"
        ),
    )
}

fn big_ones(len: u64) -> Vec<u8> {
    vec![1u8; len as usize]
}

fn broadcast_len_u8((_, b): (Shard, corepool_mpi::Broadcast<u8>)) -> u64 {
    b.len() as u64
}

fn spin_forever(_: u64) -> u64 {
    loop {
        std::hint::spin_loop();
    }
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

fn rank_program(scenario: &str) -> Result<(), Box<dyn std::error::Error>> {
    corepool::init();
    let cluster = match scenario {
        "pieces" => Cluster::builder().message_piece_bytes(SMALL_PIECE).init()?,
        // Ranks need not agree on the piece: rank 0 asks for one of a byte
        // (the 4 KiB floor), the others for SMALL_PIECE.
        "pieces_mixed" => Cluster::builder()
            .message_piece_bytes(if launcher_rank() == 0 { 1 } else { SMALL_PIECE })
            .init()?,
        "grace_progress" => Cluster::builder()
            .message_piece_bytes(4096)
            .shutdown_grace(SHORT_GRACE)
            .init()?,
        "timeout_on_rank_1" => Cluster::builder()
            .task_timeout(Duration::from_millis(300))
            .init()?,
        "stopped_rank" => Cluster::builder()
            .shutdown_grace(Duration::from_secs(2))
            .init()?,
        "rank0_none" => match Cluster::builder().rank0_workers(0).init() {
            Ok(cluster) if cluster.ranks() > 1 => {
                check(cluster.workers()[0] == 0, "rank 0 has no worker")?;
                check(cluster.apply(square, 4)? == 16, "the others compute")?;
                println!("RANK0 NONE OK on {} ranks", cluster.ranks());
                return Ok(());
            }
            Ok(_) => return Err("one rank with rank0_workers(0) started".into()),
            Err(e) => {
                let text = e.to_string();
                check(
                    matches!(e, corepool_mpi::ClusterError::Config(_))
                        && text.contains("rank0_workers(0)")
                        && text.contains("mpirun -n 2"),
                    &format!("a config error with advice: {e:?}"),
                )?;
                println!("RANK0 NONE REFUSED: {text}");
                return Ok(());
            }
        },
        _ => Cluster::init()?,
    };
    match scenario {
        "api" => {
            check(cluster.apply(square, 12)? == 144, "apply")?;
            let (tx, rx) = mpsc::channel();
            let cb = Callbacks::new().on_success(move |v: &u64| tx.send(*v).unwrap());
            let h = cluster.apply_async_with(square, 9, cb)?;
            check(h.get()? == 81, "apply_async")?;
            check(rx.recv()? == 81, "callback")?;
            for rank in 0..cluster.ranks() {
                check(
                    cluster.apply_on_rank(rank, square, 5)? == 25,
                    "apply_on_rank",
                )?;
            }
            let on_last = cluster.apply_async_on_rank(cluster.ranks() - 1, where_am_i, 10)?;
            on_last.wait();
            check(on_last.ready(), "ready after wait")?;
            check(
                on_last.get_timeout(std::time::Duration::from_secs(60))? > 0,
                "get_timeout",
            )?;
            check(
                matches!(
                    on_last.get_timeout(std::time::Duration::ZERO),
                    Err(Error::ResultTaken)
                ),
                "a result is taken once",
            )?;
            check(
                matches!(
                    cluster.apply(never_runs, PanicsWhenEncoded),
                    Err(Error::Encode { .. })
                ),
                "a panicking encoder fails its task",
            )?;
            check(
                cluster.apply(square, 3)? == 9,
                "the cluster runs on after an encoder panicked",
            )?;
            check(
                matches!(
                    cluster.apply_on_rank(99, square, 1),
                    Err(Error::InvalidConfig { .. })
                ),
                "no rank 99",
            )?;
            let squares = cluster.map(square, 0..10_000u64)?;
            check(
                squares == (0..10_000u64).map(|x| x * x).collect::<Vec<_>>(),
                "map in order",
            )?;
            let sums = cluster.starmap(add, (0..100u64).map(|i| (i, 1)))?;
            check(sums == (1..=100).collect::<Vec<_>>(), "starmap")?;
            let chunked = cluster.chunked(7)?.map(square, 0..100u64)?;
            check(
                chunked == (0..100u64).map(|x| x * x).collect::<Vec<_>>(),
                "chunked map",
            )?;
            let lazy: Vec<u64> = cluster
                .imap(square, 0..500u64)?
                .collect::<corepool::Result<_>>()?;
            check(
                lazy == (0..500u64).map(|x| x * x).collect::<Vec<_>>(),
                "imap",
            )?;
            let mut any: Vec<u64> = cluster
                .chunked(3)?
                .imap_unordered(square, 0..500u64)?
                .collect::<corepool::Result<_>>()?;
            any.sort_unstable();
            check(any == lazy, "imap_unordered")?;
            let ran_on = cluster
                .chunked(1)?
                .map(where_am_i, vec![2_000_000u64; 32])?;
            let mut ranks: Vec<i32> = ran_on.clone();
            ranks.sort_unstable();
            ranks.dedup();
            check(
                ranks.len() == cluster.ranks(),
                &format!("tasks ran on every rank: {ran_on:?}"),
            )?;
            match cluster.apply(fail_on_seven, 7) {
                Err(Error::Panicked { message }) => {
                    check(message.contains("seven is not allowed"), "panic message")?;
                    check(message.contains("(on rank "), "the panic names its rank")?
                }
                other => return Err(format!("apply of a panicking task gave {other:?}").into()),
            }
            // Rank 0's own pool names itself as the serving ranks do.
            match cluster.apply_on_rank(0, fail_on_seven, 7) {
                Err(Error::Panicked { message }) => {
                    check(message.contains("(on rank 0)"), "a panic on rank 0 says so")?
                }
                other => {
                    return Err(
                        format!("apply on rank 0 of a panicking task gave {other:?}").into(),
                    )
                }
            }
            // And a serving rank names itself alone (it was labelled rank 0
            // as well: "(on rank 0) (on rank 1)").
            if cluster.ranks() > 1 {
                match cluster.apply_on_rank(1, fail_on_seven, 7) {
                    Err(Error::Panicked { message }) => check(
                        message.contains("(on rank 1)") && !message.contains("(on rank 0)"),
                        &format!("a panic on rank 1 names rank 1 alone: {message}"),
                    )?,
                    other => {
                        return Err(
                            format!("apply on rank 1 of a panicking task gave {other:?}").into(),
                        )
                    }
                }
            }
            match cluster.chunked(1)?.map(fail_on_seven, 0..20u64) {
                Err(Error::Panicked { .. }) => {}
                other => return Err(format!("map with a panicking item gave {other:?}").into()),
            }
            check(cluster.apply(square, 3)? == 9, "goes on after a panic")?;
            // Large arguments to a serving rank go into its arena (with
            // the default 4 MiB rings, 1 MiB would fit a ring message);
            // smaller ones through its ring; all of them intact.
            let last = cluster.ranks() - 1;
            if last > 0 {
                // First (no argument yet was larger than a ring message,
                // which would spill into the arena however it came).
                let (_, in_arena) =
                    cluster.apply_on_rank(last, sum_in_arena, pattern(1 << 20, 9))?;
                check(in_arena, "a large argument is received into the arena")?;
            }
            let sizes = [1 << 20, 3 << 20, 300 << 10, 40 << 10, 100 << 10, 2 << 20];
            let handles = sizes
                .iter()
                .enumerate()
                .map(|(seed, &len)| {
                    cluster.apply_async_on_rank(last, sum_in_arena, pattern(len, seed))
                })
                .collect::<corepool::Result<Vec<_>>>()?;
            for (seed, (h, &len)) in handles.into_iter().zip(&sizes).enumerate() {
                let want: u64 = pattern(len, seed).iter().map(|&b| u64::from(b)).sum();
                let (got, _) = h.get()?;
                check(
                    got == want,
                    &format!("a {len}-byte argument arrives intact"),
                )?;
            }
            println!(
                "API OK on {} ranks (thread level {:?})",
                cluster.ranks(),
                cluster.threading()
            );
        }
        "broadcast" => {
            let n = 300usize;
            let a: Vec<f64> = (0..n * n).map(|i| (i % 17) as f64).collect();
            let shared = cluster.broadcast(&a)?;
            let parts = cluster.gather(sum_rows, (shared.clone(), n as u64))?;
            check(parts.len() == cluster.ranks(), "one part per rank")?;
            let total: f64 = parts.iter().sum();
            check(total == a.iter().sum::<f64>(), "gathered sums")?;
            let reduced = cluster.reduce(sum_rows, (shared.clone(), n as u64), |x, y| x + y)?;
            check(reduced == total, "reduce")?;
            let picks = cluster
                .chunked(5)?
                .map(element, (0..100u64).map(|i| (shared.clone(), i * 7)))?;
            check(
                picks == (0..100usize).map(|i| a[i * 7]).collect::<Vec<_>>(),
                "tasks read the broadcast",
            )?;
            // An empty array is a broadcast like any other (it used to abort
            // the job: a zero-length MPI_Bcast of a dangling buffer).
            let empty = cluster.broadcast::<f64>(&[])?;
            let lens = cluster.gather(broadcast_len, empty)?;
            check(lens == vec![0; cluster.ranks()], "an empty broadcast")?;
            println!("BROADCAST OK");
        }
        "pieces" | "pieces_mixed" => {
            // Every message over SMALL_PIECE goes in pieces: arguments,
            // results, in flight both ways at once, and broadcasts; the
            // path of every message over 1 GiB (trial 28: 2 GiB or more
            // panicked inside rsmpi and aborted the job).
            let last = cluster.ranks() - 1;
            let p = SMALL_PIECE;
            let sizes = [0, 1, p - 1, p, p + 1, 2 * p, 3 * p + 5, 1 << 20];
            let mut args = Vec::new();
            let mut results = Vec::new();
            for (seed, &len) in sizes.iter().enumerate() {
                args.push(cluster.apply_async_on_rank(last, checksum, pattern(len, seed))?);
                results.push(cluster.apply_async_on_rank(
                    last,
                    make_pattern,
                    (len as u64, seed as u64),
                )?);
            }
            for (seed, (arg, result)) in args.into_iter().zip(results).enumerate() {
                let want = pattern(sizes[seed], seed);
                check(
                    arg.get()? == checksum(want.clone()),
                    &format!("a {}-byte argument in pieces arrives intact", sizes[seed]),
                )?;
                check(
                    result.get()? == want,
                    &format!("a {}-byte result in pieces arrives intact", sizes[seed]),
                )?;
            }
            // Chunks of a map in pieces (about 3 * 40 KiB each).
            let items: Vec<Vec<u8>> = (0..12).map(|i| pattern(40 << 10, i)).collect();
            let sums = cluster.chunked(3)?.map(checksum, items.clone())?;
            check(
                sums == items.into_iter().map(checksum).collect::<Vec<_>>(),
                "a map whose chunks go in pieces",
            )?;
            // A broadcast in pieces (one MPI_Bcast each on every rank).
            let a: Vec<f64> = (0..100_000).map(|i| (i % 17) as f64).collect();
            let shared = cluster.broadcast(&a)?;
            let lens = cluster.gather(broadcast_len, shared.clone())?;
            check(
                lens == vec![a.len() as u64; cluster.ranks()],
                "broadcast length",
            )?;
            let picks = cluster
                .chunked(5)?
                .map(element, (0..100u64).map(|i| (shared.clone(), i * 997)))?;
            check(
                picks == (0..100usize).map(|i| a[i * 997]).collect::<Vec<_>>(),
                "tasks read a broadcast sent in pieces",
            )?;
            check(cluster.apply(square, 3)? == 9, "small messages still whole")?;
            println!(
                "{} OK on {} ranks",
                scenario.to_uppercase(),
                cluster.ranks()
            );
        }
        "grace_progress" => {
            // The drop's wait for rank 1 begins while a large argument's
            // 4 KiB pieces still go to it, for longer than the grace in
            // all: the grace runs from the last piece that moved, so the
            // job ends cleanly (it was measured from the shutdown and
            // ended the job with MPI_Abort).
            let big = cluster.apply_async_on_rank(1, checksum, pattern(GRACE_ARGUMENT, 7))?;
            // Units go out in order: once this one's result is back, the
            // large one's pieces have been started.
            check(cluster.apply_on_rank(0, square, 3)? == 9, "rank 0 computes")?;
            drop(big);
            let start = Instant::now();
            drop(cluster);
            // Not asserted (a duration): whether the wait outlasted the
            // grace, the case this scenario is for.
            println!(
                "GRACE OK: the drop took {:?}, the grace is {SHORT_GRACE:?}",
                start.elapsed()
            );
            return Ok(());
        }
        "giant" => {
            // Opt-in (COREPOOL_MPI_GIANT=1): messages over 2 GiB for real,
            // each way and broadcast. Peak memory about 12 GiB.
            let last = cluster.ranks() - 1;
            let len = (2usize << 30) + (200 << 20);
            let (got, _) = cluster.apply_on_rank(last, sum_in_arena, vec![1u8; len])?;
            check(got == len as u64, "a 2.2 GiB argument")?;
            let back = cluster.apply_on_rank(last, big_ones, len as u64)?;
            check(back.len() == len && back[len - 1] == 1, "a 2.2 GiB result")?;
            drop(back);
            let data = vec![1u8; len];
            let b = cluster.broadcast(&data)?;
            drop(data);
            let lens = cluster.gather(broadcast_len_u8, b)?;
            check(
                lens == vec![len as u64; cluster.ranks()],
                "a 2.2 GiB broadcast",
            )?;
            println!("GIANT OK");
        }
        "wire_panics" => {
            // Trial 28: an argument's encoder that panics, through every
            // map path (it unwound out of `Cluster::map` into main), and
            // the errors name the type and quote the panic.
            let first_bad = || [13u64, 1, 2, 3].map(Fuse);
            let later_bad = || [1u64, 2, 13, 3].map(Fuse);
            for (items, what) in [(first_bad(), "first"), (later_bad(), "later")] {
                let items: Vec<Fuse> = items.into_iter().collect();
                let again = || items.iter().map(|f| Fuse(f.0)).collect::<Vec<_>>();
                wire_error(
                    cluster.map(fuse_value, again()),
                    false,
                    "Fuse",
                    "thirteen",
                    &format!("map, {what} item"),
                )?;
                wire_error(
                    cluster.chunked(1)?.map(fuse_value, again()),
                    false,
                    "Fuse",
                    "thirteen",
                    &format!("chunked map, {what} item"),
                )?;
                wire_error(
                    // Refused at submission (the first item), or in the items.
                    cluster
                        .imap(fuse_value, again())
                        .and_then(|i| i.collect::<corepool::Result<Vec<_>>>()),
                    false,
                    "Fuse",
                    "thirteen",
                    &format!("imap, {what} item"),
                )?;
                wire_error(
                    cluster
                        .imap_unordered(fuse_value, again())
                        .and_then(|i| i.collect::<corepool::Result<Vec<_>>>()),
                    false,
                    "Fuse",
                    "thirteen",
                    &format!("imap_unordered, {what} item"),
                )?;
                wire_error(
                    cluster.map(fuse_plus, again().into_iter().map(|f| (f, 1))),
                    false,
                    "Fuse",
                    "thirteen",
                    &format!("map of pairs, {what} item"),
                )?;
            }
            wire_error(
                cluster.apply(fuse_value, Fuse(13)),
                false,
                "Fuse",
                "thirteen",
                "apply",
            )?;
            wire_error(
                cluster.apply(never_runs, PanicsWhenEncoded),
                false,
                "PanicsWhenEncoded",
                "deliberate panic in an encoder",
                "apply",
            )?;
            for rank in 0..cluster.ranks() {
                wire_error(
                    cluster.apply_on_rank(rank, fuse_of, 14),
                    true,
                    "Fuse",
                    "fourteen",
                    "a result's decoder",
                )?;
            }
            check(
                cluster.map(fuse_value, [5u64, 6].map(Fuse))? == vec![5, 6],
                "goes on",
            )?;
            println!("WIRE PANICS OK");
        }
        "stopped_rank" => {
            // A rank that hangs alive at the end: the drop waits the grace
            // (2 s here, not 60), then ends the job naming the rank.
            let pids = cluster.gather(rank_pids, ())?;
            let rank1 = pids
                .iter()
                .find(|p| p.0 == 1)
                .map(|p| p.1)
                .ok_or("no rank 1")?;
            let all: Vec<String> = pids
                .iter()
                .flat_map(|&(_, rank, worker)| [rank, worker])
                .chain([std::process::id() as i32])
                .map(|p| p.to_string())
                .collect();
            println!("PIDS {}", all.join(" "));
            // SAFETY: `kill` has no memory preconditions.
            unsafe { libc::kill(rank1, libc::SIGSTOP) };
            drop(cluster);
            println!("UNREACHABLE: the drop returned");
        }
        "worker_killed" => {
            match cluster.gather(die_on_rank_1, ()) {
                Err(Error::WorkerDied { rank: Some(1), .. }) => {}
                other => return Err(format!("a worker killed on rank 1 gave {other:?}").into()),
            }
            let squares = cluster.chunked(1)?.map(square, 0..50u64)?;
            check(
                squares == (0..50u64).map(|x| x * x).collect::<Vec<_>>(),
                "works after a respawn",
            )?;
            let again = cluster.gather(rank_pids, ())?;
            check(
                again.len() == cluster.ranks(),
                "every rank serves after a respawn",
            )?;
            println!("WORKER KILLED OK");
        }
        "timeout_on_rank_1" => {
            // Trial 28: a timeout on another rank did not say which.
            match cluster.gather(spin_on_rank_1, ()) {
                Err(e @ Error::TaskTimedOut { rank: Some(1), .. }) => check(
                    e.to_string().contains("on rank 1"),
                    &format!("the message names the rank: {e}"),
                )?,
                other => return Err(format!("a task timed out on rank 1 gave {other:?}").into()),
            }
            let squares = cluster.chunked(1)?.map(square, 0..20u64)?;
            check(
                squares == (0..20u64).map(|x| x * x).collect::<Vec<_>>(),
                "works after the timeout's respawn",
            )?;
            println!("TIMEOUT ON RANK 1 OK");
        }
        "rank_killed" | "sigterm" => {
            let pids = cluster.gather(rank_pids, ())?;
            let all: Vec<String> = pids
                .iter()
                .flat_map(|&(_, rank, worker)| [rank, worker])
                .chain([std::process::id() as i32])
                .map(|p| p.to_string())
                .collect();
            let rank1 = pids
                .iter()
                .find(|p| p.0 == 1)
                .map(|p| p.1)
                .ok_or("no rank 1")?;
            println!("PIDS {}", all.join(" "));
            println!("RANK1 {rank1}");
            use std::io::Write;
            std::io::stdout().flush()?;
            if scenario == "rank_killed" {
                // SAFETY: `kill` has no memory preconditions.
                unsafe { libc::kill(rank1, libc::SIGKILL) };
            }
            // Keep the job busy: it must be ended from outside.
            let _ = cluster.chunked(1)?.map(spin_forever, 0..64u64);
            println!("UNREACHABLE: the map returned");
        }
        other => return Err(format!("unknown scenario {other}").into()),
    }
    Ok(())
}

// ---------------------------------------------------------------- driver

/// What a job printed and how it ended.
struct Job {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn is_root() -> bool {
    // SAFETY: `geteuid` has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whose launcher (or library) it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Open MPI's `mpirun`.
    OpenMpi,
    /// MPICH's Hydra (`mpiexec.hydra`; Debian's `mpirun.mpich`), which
    /// Intel MPI and MVAPICH use too.
    Hydra,
}

/// The launcher every job of this run goes through.
struct Launcher {
    program: String,
    flavor: Flavor,
    /// What its `--version` says, in one line.
    version: String,
}

/// The variable naming the launcher.
const LAUNCHER_VAR: &str = "COREPOOL_MPIRUN";

impl Launcher {
    /// `$COREPOOL_MPIRUN` or `mpirun`, by its `--version`.
    fn find() -> Self {
        let program = std::env::var(LAUNCHER_VAR).unwrap_or_else(|_| "mpirun".into());
        let out = match Command::new(&program).arg("--version").output() {
            Ok(out) => out,
            Err(e) => panic!(
                "{program} not found ({e}): install Open MPI (`.ci/mpi-packages`, or apt-get install libopenmpi-dev openmpi-bin libclang-dev), or set {LAUNCHER_VAR} to your MPI's launcher"
            ),
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let (flavor, version) = if let Some(line) = text.lines().find(|l| l.contains("Open MPI")) {
            // "mpirun (Open MPI) 4.1.4"
            (Flavor::OpenMpi, line.trim().to_string())
        } else if text.contains("HYDRA") {
            // "HYDRA build details:" then "    Version:   4.0.2"
            let number = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Version:"))
                .unwrap_or("(version unknown)")
                .trim();
            (Flavor::Hydra, format!("HYDRA {number}"))
        } else {
            panic!(
                "{program} --version names neither Open MPI nor MPICH's Hydra; these tests know those two launchers (set {LAUNCHER_VAR}):\n{text}"
            )
        };
        Self {
            program,
            flavor,
            version,
        }
    }

    /// A job of `n` ranks, with the flags this machine needs.
    fn command(&self, n: usize) -> Command {
        let mut cmd = Command::new(&self.program);
        if self.flavor == Flavor::OpenMpi {
            // Open MPI refuses root without it, and more ranks than cores
            // without `--oversubscribe`; Hydra does neither.
            if is_root() {
                cmd.arg("--allow-run-as-root");
            }
            cmd.arg("--oversubscribe");
        }
        cmd.args(["-n", &n.to_string()]);
        // Its own process group: the watchdog can end the launcher and
        // every rank it started at once, even when it no longer can.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Whether the launcher's report of a dead rank names it: Open MPI by
    /// rank ("process rank 1 with PID ... exited on signal 9"), Hydra by pid
    /// ("BAD TERMINATION ... PID 1234 RUNNING AT host").
    fn names_dead_rank(&self, output: &str, rank: usize, pid: i32) -> bool {
        match self.flavor {
            Flavor::OpenMpi => output.contains(&format!("rank {rank}")),
            Flavor::Hydra => output.contains(&format!("PID {pid} ")),
        }
    }
}

/// The launcher of this run, found once.
fn launcher() -> &'static Launcher {
    static LAUNCHER: std::sync::OnceLock<Launcher> = std::sync::OnceLock::new();
    LAUNCHER.get_or_init(Launcher::find)
}

/// The MPI library this binary links, by its own description (callable
/// before `MPI_Init`), in one line, and whose it is.
fn linked_library() -> (Option<Flavor>, String) {
    let line = corepool_mpi::mpi_library();
    let flavor = if line.starts_with("Open MPI") {
        Some(Flavor::OpenMpi)
    } else if ["MPICH", "MVAPICH", "Intel(R) MPI"]
        .iter()
        .any(|name| line.contains(name))
    {
        Some(Flavor::Hydra)
    } else {
        None
    };
    (flavor, line)
}

/// A job of `n` ranks through this run's launcher.
fn mpirun(n: usize) -> Command {
    launcher().command(n)
}

/// Runs `cmd` under the watchdog; `on_line` sees each line of stdout as it
/// comes, with the process's pid (to signal it).
fn run(mut cmd: Command, mut on_line: impl FnMut(&str, u32)) -> Job {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", launcher().program));
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut s);
        s
    });
    let deadline = Instant::now() + WATCHDOG;
    let mut stdout = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                on_line(&line, pid);
                stdout.push_str(&line);
                stdout.push('\n');
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(status) = child.try_wait().unwrap() {
            let _ = reader.join();
            while let Ok(line) = rx.try_recv() {
                stdout.push_str(&line);
                stdout.push('\n');
            }
            let stderr = err_reader.join().unwrap_or_default();
            return Job {
                status,
                stdout,
                stderr,
            };
        }
        if Instant::now() > deadline {
            // The whole group: killing mpirun alone (SIGKILL) would orphan
            // its ranks, which then spin on past the test.
            // SAFETY: `kill` has no memory preconditions; `-pid` names the
            // group `mpirun` leads (see `mpirun`).
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("watchdog: the job did not end within {WATCHDOG:?}; stdout so far:\n{stdout}");
        }
    }
}

fn me() -> PathBuf {
    std::env::current_exe().unwrap()
}

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/cluster-<hash> -> target/<profile>/examples/<name>
    me().parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

fn scenario(n: usize, name: &str) -> Job {
    let mut cmd = mpirun(n);
    cmd.arg(me()).args([RANK_PROGRAM, name]);
    run(cmd, |_, _| {})
}

fn expect_ok(job: &Job, marker: &str) {
    assert!(
        job.status.success() && job.stdout.contains(marker),
        "expected {marker:?} and success, got {:?}\nstdout:\n{}\nstderr:\n{}",
        job.status,
        job.stdout,
        job.stderr
    );
}

/// Entries in /dev/shm, sorted, less those another job (a concurrent MPI run
/// outside this test's process tree) holds: see `common::shm_entries`.
fn shm_entries() -> Vec<String> {
    common::shm_entries().into_iter().collect()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for this purpose: it runs nothing and holds nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Other processes running this executable (ranks, their workers), found
/// by `/proc/<pid>/exe`: orphans are no children of ours any more.
fn ranks_of_this_binary() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
                .filter(|&pid| pid != me)
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pids_of(stdout: &str) -> Vec<i32> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("PIDS "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until none of `pids` runs: the kernel reaps orphans
/// asynchronously after their parent's death.
fn assert_all_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "processes left behind: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn test_api() {
    for n in [2, 3] {
        let job = scenario(n, "api");
        let marker = format!("API OK on {n} ranks");
        expect_ok(&job, &marker);
        // Which thread level this MPI granted, in the test's output.
        if let Some(line) = job.stdout.lines().find(|l| l.starts_with(&marker)) {
            println!("  {line}");
        }
    }
}

fn test_broadcast() {
    expect_ok(&scenario(2, "broadcast"), "BROADCAST OK");
}

fn test_pieces() {
    for n in [2, 3] {
        expect_ok(&scenario(n, "pieces"), &format!("PIECES OK on {n} ranks"));
    }
}

/// Ranks with different pieces (rank 0's below the floor), on 3 ranks.
fn test_pieces_mixed() {
    expect_ok(&scenario(3, "pieces_mixed"), "PIECES_MIXED OK on 3 ranks");
}

/// A shutdown grace shorter than a transfer in pieces that is still going
/// at the drop: the job ends cleanly.
fn test_grace_progress() {
    let job = scenario(2, "grace_progress");
    expect_ok(&job, "GRACE OK");
    if let Some(line) = job.stdout.lines().find(|l| l.starts_with("GRACE OK")) {
        println!("  {line}");
    }
}

fn test_wire_panics() {
    expect_ok(&scenario(2, "wire_panics"), "WIRE PANICS OK");
}

/// Messages over 2 GiB for real: opt-in, for its memory (about 12 GiB at
/// its peak, two ranks on one machine) and time.
fn test_giant() {
    if std::env::var_os("COREPOOL_MPI_GIANT").is_none() {
        println!(
            "  skipped: set COREPOOL_MPI_GIANT=1 to send 2.2 GiB messages (about 12 GiB of memory)"
        );
        return;
    }
    expect_ok(&scenario(2, "giant"), "GIANT OK");
}

/// `rank0_workers(0)`: a configuration error with advice on one rank, a
/// job whose other ranks compute on two.
fn test_rank0_none() {
    expect_ok(&scenario(1, "rank0_none"), "RANK0 NONE REFUSED");
    expect_ok(&scenario(2, "rank0_none"), "RANK0 NONE OK on 2 ranks");
}

/// A serving rank stopped (SIGSTOP) when rank 0 drops the cluster: after
/// the configured grace the job ends (`MPI_Abort`) naming the rank, and
/// nothing of it is left.
fn test_stopped_rank() {
    let job = scenario(2, "stopped_rank");
    assert!(!job.status.success(), "the job is ended");
    assert!(!job.stdout.contains("UNREACHABLE"), "{}", job.stdout);
    assert!(
        job.stderr
            .contains("ranks [1] did not stop, and nothing came or went for 2s")
            && job.stderr.contains("shutdown_grace"),
        "stderr:\n{}",
        job.stderr
    );
    let pids = pids_of(&job.stdout);
    assert!(pids.len() >= 5, "pids printed: {}", job.stdout);
    assert_all_gone(&pids);
}

/// `corepool-mpi bench`: a command line that cannot work is a usage error
/// (exit 2, before MPI starts), and a partial run says "not run" for the
/// figures it did not measure and records the MPI in its JSON rows.
fn test_bench_command() {
    let bench = env!("CARGO_BIN_EXE_corepool-mpi");
    for (args, says) in [
        (
            &["bench", "--only", "nope"][..],
            "unknown workload `nope`: choose from apply_async, map",
        ),
        (
            &["bench", "--repeats", "0"][..],
            "--repeats \"0\": give a whole number of at least 1",
        ),
        (
            &["bench", "--frobnicate"][..],
            "unknown argument `--frobnicate`",
        ),
    ] {
        let out = Command::new(bench).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let mut cmd = mpirun(2);
    cmd.arg(bench)
        .args(["bench", "--quick", "--only", "latency", "--json"]);
    let job = run(cmd, |_, _| {});
    assert!(job.status.success(), "{}", job.stderr);
    let rows: Vec<serde_json::Value> = job
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["workload"] == "latency"));
    assert!(
        rows.iter()
            .all(|r| r["mpi"].as_str().is_some_and(|m| m.contains("MPI"))
                && r["thread_level"].is_string()),
        "{}",
        job.stdout
    );
    assert!(
        job.stderr.contains("cpu_loop cluster/local = not run") && !job.stderr.contains("NaN"),
        "{}",
        job.stderr
    );
}

fn test_worker_killed() {
    expect_ok(&scenario(2, "worker_killed"), "WORKER KILLED OK");
}

fn test_timeout_on_rank_1() {
    expect_ok(&scenario(2, "timeout_on_rank_1"), "TIMEOUT ON RANK 1 OK");
}

fn test_rank_killed() {
    let before = shm_entries();
    let job = scenario(2, "rank_killed");
    assert!(!job.status.success(), "a job whose rank died must fail");
    let all = format!("{}{}", job.stdout, job.stderr);
    assert!(!all.contains("UNREACHABLE"));
    let pids = pids_of(&job.stdout);
    assert!(pids.len() >= 5, "pids printed: {}", job.stdout);
    let rank1: i32 = job
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("RANK1 "))
        .and_then(|p| p.trim().parse().ok())
        .expect("rank 1's pid printed");
    assert!(
        launcher().names_dead_rank(&all, 1, rank1),
        "the message names the rank (rank 1, pid {rank1}):\n{all}"
    );
    assert_all_gone(&pids);
    assert_eq!(shm_entries(), before, "nothing left in /dev/shm");
}

/// A signal to the launcher while every rank is busy ends the job, and
/// nothing of it is left.
fn launcher_signalled(signal: libc::c_int) {
    let before = shm_entries();
    let mut cmd = mpirun(2);
    cmd.arg(me()).args([RANK_PROGRAM, "sigterm"]);
    let job = run(cmd, |line, pid| {
        if line.starts_with("PIDS ") {
            // SAFETY: `kill` has no memory preconditions.
            unsafe { libc::kill(pid as i32, signal) };
        }
    });
    assert!(!job.status.success());
    let pids = pids_of(&job.stdout);
    assert!(pids.len() >= 5, "pids printed: {}", job.stdout);
    assert_all_gone(&pids);
    assert_eq!(shm_entries(), before, "nothing left in /dev/shm");
}

fn test_sigterm() {
    launcher_signalled(libc::SIGTERM);
}

/// Ctrl-C at the terminal: both launchers forward it to the ranks.
fn test_sigint() {
    launcher_signalled(libc::SIGINT);
}

fn test_binary_mismatch() {
    let dir = std::env::temp_dir().join(format!("corepool-mpi-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("other-build");
    let mut bytes = std::fs::read(me()).unwrap();
    bytes.push(0); // another build: same code, another content hash
    std::fs::write(&other, bytes).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&other).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = mpirun(1);
    cmd.arg(me())
        .args([RANK_PROGRAM, "api", ":", "-n", "1"])
        .arg(&other)
        .args([RANK_PROGRAM, "api"]);
    let job = run(cmd, |_, _| {});
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!job.status.success());
    assert!(
        job.stderr.contains("do not run the same build") && job.stderr.contains("rank 1"),
        "stderr:\n{}",
        job.stderr
    );
    assert!(!job.stdout.contains("API OK"));
}

fn test_examples() {
    for (name, marker) in [("mpi_pi", "pi ~ 3.1"), ("mpi_matvec", "matvec OK")] {
        let path = example(name);
        assert!(path.exists(), "{} is built by `cargo test`", path.display());
        let mut cmd = mpirun(2);
        cmd.arg(&path);
        expect_ok(&run(cmd, |_, _| {}), marker);
    }
}

fn driver() {
    let launcher = launcher();
    let (library_flavor, library) = linked_library();
    if library_flavor.is_some_and(|f| f != launcher.flavor) {
        // Each rank would start as a one-rank world of its own.
        panic!(
            "this test binary links {library}, but {} is {}: set {LAUNCHER_VAR} to the launcher of the MPI it was built with (Debian: mpirun.mpich for MPICH, mpirun.openmpi for Open MPI)",
            launcher.program, launcher.version
        );
    }
    println!(
        "corepool-mpi cluster tests on {library} (launcher {}: {})",
        launcher.program, launcher.version
    );
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 17] = [
        ("api", test_api),
        ("pieces", test_pieces),
        ("pieces_mixed", test_pieces_mixed),
        ("grace_progress", test_grace_progress),
        ("wire_panics", test_wire_panics),
        ("giant", test_giant),
        ("rank0_none", test_rank0_none),
        ("stopped_rank", test_stopped_rank),
        ("bench_command", test_bench_command),
        ("broadcast", test_broadcast),
        ("worker_killed", test_worker_killed),
        ("timeout_on_rank_1", test_timeout_on_rank_1),
        ("rank_killed", test_rank_killed),
        ("sigterm", test_sigterm),
        ("sigint", test_sigint),
        ("binary_mismatch", test_binary_mismatch),
        ("examples", test_examples),
    ];
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let shm_before = shm_entries();
        let start = Instant::now();
        test();
        // Every test, not only the kill tests: no rank of this binary
        // outlives its job, and the job leaves nothing in /dev/shm.
        assert_all_gone(&ranks_of_this_binary());
        let new_shm: Vec<_> = shm_entries()
            .into_iter()
            .filter(|e| !shm_before.contains(e))
            .collect();
        assert!(
            new_shm.is_empty(),
            "test {name} left in /dev/shm: {new_shm:?}"
        );
        println!("test {name} ... ok ({:.1?})", start.elapsed());
    }
}
