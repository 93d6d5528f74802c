//! The `corepool` command: machine information, benchmarks, a pinning tuner
//! and a chaos soak for the corepool library. `corepool --help` is the
//! user's documentation; this says where each part lives.
//!
//! Subcommands:
//! - `info` ([`info`]): the CPUs, this process's allowed set and the
//!   topology, as a table or `--json`.
//! - `bench` ([`mod@bench`]): the standard workloads on corepool, on rayon
//!   threads and sequentially, repeated, with ratios; `--vs-python` adds
//!   Python's `multiprocessing.Pool` ([`python`] runs `scripts/bench_mp.py`),
//!   `--scale` sweeps 1..N workers and `--plot` draws the curves ([`plot`]).
//!   `bench/args.rs` is the command line, `bench/suite.rs` the repeated
//!   suite, `bench/scale.rs` the sweep, `bench/vs_python.rs` the Python rows
//!   and `bench/report.rs` the tables and JSON lines.
//! - `pin` ([`pin`]): the topology, then a sweep of pinning layouts on one
//!   workload and the layout to use, with its measured margin;
//!   `pin/recommend.rs` judges the runs and `pin/report.rs` prints them.
//! - `soak` ([`soak`]): checkable tasks while workers are killed; exits 0
//!   only if nothing was lost and nothing was wrong.
//!
//! Shared by `bench` and `pin`: [`workloads`] (what each workload is, and a
//! runner each for corepool, threads and the calling thread), [`topo`] (the
//! machine from `/sys`, and in `topo/layout.rs` where each pinning layout
//! puts the workers) and [`stats`] (median, min, max). [`error`] is the
//! error every subcommand returns; [`output`] is every write to standard
//! output (fallible: a closed pipe ends the command quietly, never a panic);
//! [`sys`] holds the command's only raw system calls; [`cleanup`] removes
//! temporary files and ends the Python baseline (with [`proctree`], which
//! kills a process with all it started) when a signal ends the command.

mod bench;
mod cleanup;
mod error;
mod info;
mod numbers;
mod output;
mod pin;
mod plot;
mod proctree;
mod python;
mod soak;
mod stats;
mod sys;
mod topo;
mod workloads;

use error::CliError;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "corepool",
    version,
    about = "Pinned worker processes over shared-memory rings: information, benchmarks and a pinning tuner",
    after_help = "Exit status: 0 on success; 1 on a run that failed (said on stderr: a pool, a write or the Python baseline failed) or a soak that lost or got wrong results; 2 on a command line that cannot work (an unknown option or workload, a value out of range, a --size this machine cannot hold), said on stderr before anything runs; 141 (128 + SIGPIPE, as for `cat` or `ls`) when the reader of the output went away, e.g. `corepool bench --json | head -1`: the command stops quietly, its workers and any Python baseline ended."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the CPUs, this process's allowed set and the topology /sys describes.
    Info {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the standard workloads on corepool, on threads and sequentially
    /// (and on Python's multiprocessing with --vs-python), repeated; or, with
    /// --scale, on 1..N workers.
    Bench(bench::BenchArgs),
    /// Show the topology (packages, cores, SMT siblings, NUMA nodes, caches),
    /// sweep pinning layouts on a workload and recommend the best.
    Pin(pin::PinArgs),
    /// Run checkable tasks while workers are killed; exit 0 only if nothing
    /// was lost and nothing was wrong.
    Soak(soak::SoakArgs),
}

/// Prints clap's answer (help, version, or a usage error) and exits with
/// its status; help that cannot be written (a full disk, a closed pipe) is
/// reported as any other output would be.
fn clap_exit(e: &clap::Error) -> ExitCode {
    use std::io::Write;
    let printed = e.print().and_then(|()| std::io::stdout().flush());
    match printed {
        Err(w) if w.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(output::BROKEN_PIPE_STATUS)
        }
        Err(w) => {
            output::warn(format_args!("corepool: {}", CliError::Output(w)));
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => return clap_exit(&e),
    };
    cleanup::install();
    // Each subcommand has dropped its pools (and ended any Python child) by
    // the time it returns, whatever it returns.
    let result: Result<bool, CliError> = match args.command {
        Command::Info { json } => info::run(json).map(|()| true),
        Command::Bench(b) => bench::run(&b).map(|()| true),
        Command::Pin(p) => pin::run(&p).map(|()| true),
        Command::Soak(s) => soak::run(&s),
    }
    .and_then(|passed| output::flush().map(|()| passed));
    // A signal's cleanup under way (killing the Python baseline) finishes,
    // and ends the process, before this exit can cut it short.
    let _settled = cleanup::settle();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.is_broken_pipe() => ExitCode::from(output::BROKEN_PIPE_STATUS),
        Err(e) => {
            output::warn(format_args!("corepool: {e}"));
            ExitCode::from(e.exit_status())
        }
    }
}
