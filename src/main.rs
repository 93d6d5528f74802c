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
}

fn main() -> ExitCode {
    corepool::init();
    let args = Args::parse();
    let result = match args.command {
        Command::Info { json } => cli::info::run(json),
        Command::Bench(b) => cli::bench::run(&b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corepool: {e}");
            ExitCode::FAILURE
        }
    }
}
