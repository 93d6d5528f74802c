//! The `corepool` command: machine information and throughput benchmarks.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "corepool",
    version,
    about = "Pinned worker processes over shared-memory rings: information and benchmarks"
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
    /// Run the standard workloads on corepool, on threads and sequentially.
    Bench(cli::bench::BenchArgs),
    /// Run checkable tasks while workers are killed; exit 0 only if nothing
    /// was lost and nothing was wrong.
    Soak(cli::soak::SoakArgs),
}

fn main() -> ExitCode {
    corepool::init();
    let args = Args::parse();
    let result = match args.command {
        Command::Info { json } => cli::info::run(json).map(|()| true),
        Command::Bench(b) => cli::bench::run(&b).map(|()| true),
        Command::Soak(s) => cli::soak::run(&s),
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
