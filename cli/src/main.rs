//! The `corepool` command: machine information, benchmarks and a pinning tuner.

mod bench;
mod error;
mod info;
mod pin;
mod plot;
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
    about = "Pinned worker processes over shared-memory rings: information, benchmarks and a pinning tuner"
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

fn main() -> ExitCode {
    corepool::init();
    let args = Args::parse();
    let result: Result<bool, CliError> = match args.command {
        Command::Info { json } => info::run(json).map(|()| true).map_err(Into::into),
        Command::Bench(b) => bench::run(&b).map(|()| true),
        Command::Pin(p) => pin::run(&p).map(|()| true),
        Command::Soak(s) => soak::run(&s).map_err(Into::into),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("corepool: {e}");
            ExitCode::FAILURE
        }
    }
}
