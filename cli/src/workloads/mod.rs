//! The standard workloads that `corepool bench` and `corepool pin` measure:
//! what each one is ([`Workload`]), how big a run is ([`Sizes`]), the data
//! runs share ([`Inputs`]) and what one timed run gives ([`Sample`]). Each
//! system that runs them has a runner of its own: corepool's pool and
//! processes, rayon threads, and the calling thread alone.

mod bulk;
mod corepool_runner;
mod memory;
mod pair;
mod sequential_runner;
mod tasks;
mod threads_runner;

pub(crate) use bulk::THREADS_BULK_NOTE;
pub(crate) use corepool_runner::{corepool_once, corepool_other_starts_once};
pub(crate) use memory::check_fits;
pub(crate) use pair::{pair_cpus, pair_pinning};
pub(crate) use sequential_runner::sequential_once;
pub(crate) use threads_runner::{threads_once, threads_spawn_once};

use crate::CliError;
use corepool::SharedArray;
use std::time::Duration;

/// The standard workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    ApplyAsync,
    Map,
    Latency,
    CpuLoop,
    SharedSum,
    Queue,
    PipeRtt,
    Start,
    Respawn,
    Bulk,
    BulkShared,
}

pub(crate) const WORKLOADS: [Workload; 11] = [
    Workload::ApplyAsync,
    Workload::Map,
    Workload::Latency,
    Workload::CpuLoop,
    Workload::SharedSum,
    Workload::Queue,
    Workload::PipeRtt,
    Workload::Start,
    Workload::Respawn,
    Workload::Bulk,
    Workload::BulkShared,
];

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::ApplyAsync => "apply_async",
            Workload::Map => "map",
            Workload::Latency => "latency",
            Workload::CpuLoop => "cpu_loop",
            Workload::SharedSum => "shared_sum",
            Workload::Queue => "queue",
            Workload::PipeRtt => "pipe_rtt",
            Workload::Start => "start",
            Workload::Respawn => "respawn",
            Workload::Bulk => "bulk",
            Workload::BulkShared => "bulk_shared",
        }
    }

    pub(crate) fn unit(self) -> &'static str {
        match self {
            Workload::ApplyAsync => "tasks/s",
            Workload::Map => "items/s",
            Workload::Latency => "ns",
            Workload::CpuLoop => "iterations/s",
            Workload::SharedSum => "elements/s",
            Workload::Queue => "messages/s",
            Workload::PipeRtt => "ns",
            Workload::Start | Workload::Respawn => "ms",
            Workload::Bulk | Workload::BulkShared => "B/s",
        }
    }

    /// For latency, pipe_rtt, start and respawn a smaller value is better.
    pub(crate) fn lower_is_better(self) -> bool {
        matches!(
            self,
            Workload::Latency | Workload::PipeRtt | Workload::Start | Workload::Respawn
        )
    }

    /// Whether it runs on the pool's workers (and so depends on their count
    /// and placement). queue and pipe_rtt run between this process and one
    /// `corepool::Process` of their own.
    pub(crate) fn uses_pool(self) -> bool {
        !matches!(self, Workload::Queue | Workload::PipeRtt)
    }

    /// Whether --scale can sweep it: a throughput on the pool's workers,
    /// with the pool's default configuration.
    pub(crate) fn scales(self) -> bool {
        matches!(
            self,
            Workload::ApplyAsync
                | Workload::Map
                | Workload::CpuLoop
                | Workload::SharedSum
                | Workload::Bulk
                | Workload::BulkShared
        )
    }

    /// Why --scale cannot sweep it (for the workloads it cannot).
    pub(crate) fn not_scaled_because(self) -> &'static str {
        match self {
            Workload::Latency => "is a single round trip",
            Workload::Queue | Workload::PipeRtt => "runs between two processes, not on the pool",
            _ => "times starting workers, not a throughput",
        }
    }

    /// Whether the threads baseline has this workload (threads never die, so
    /// nothing is respawned).
    pub(crate) fn has_threads_baseline(self) -> bool {
        self != Workload::Respawn
    }

    /// Whether `--size` sets its count: start, respawn and the bulk
    /// workloads have fixed counts (a pool start, a kill or 8 MiB each).
    pub(crate) fn sized_by_option(self) -> bool {
        !matches!(
            self,
            Workload::Start | Workload::Respawn | Workload::Bulk | Workload::BulkShared
        )
    }

    pub(crate) fn parse(s: &str) -> Result<Self, CliError> {
        WORKLOADS
            .iter()
            .copied()
            .find(|w| w.name() == s.trim())
            .ok_or_else(|| {
                let names = WORKLOADS.map(Workload::name);
                let hint = crate::numbers::did_you_mean(s, &names)
                    .map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
                CliError::usage(format!(
                    "unknown workload `{s}`{hint}: choose from {}",
                    names.join(", ")
                ))
            })
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Workload::ApplyAsync => "no-op tasks submitted with apply_async, then all collected",
            Workload::Map => "map of a no-op over u64 items, default chunksize",
            Workload::Latency => "blocking apply round trips, median",
            Workload::CpuLoop => "the seed's loop x = x + 1, split into tasks",
            Workload::SharedSum => "sum of a shared f64 array, 4 parts per worker",
            Workload::Queue => "64-byte messages from one producer process through a Queue",
            Workload::PipeRtt => "u64 ping-pong with a child process through a duplex Pipe, median",
            Workload::Start => "build() until every worker is ready, median",
            Workload::Respawn => "SIGKILL of a worker until its replacement serves, median",
            Workload::Bulk => "tasks each taking an 8 MiB Vec<u8> and returning its length",
            Workload::BulkShared => {
                "the same 8 MiB blocks written into a SharedArray<u8>, tasks getting their range"
            }
        }
    }
}

/// Items per run of each workload. `cpu_loop` counts iterations in total,
/// `start` pool starts, `respawn` workers killed, `bulk` and `bulk_shared`
/// tasks of 8 MiB each.
#[derive(Clone, Debug)]
pub(crate) struct Sizes {
    apply_async: u64,
    map: u64,
    latency: u64,
    cpu_loop: u64,
    shared_sum_elements: u64,
    queue: u64,
    pipe_rtt: u64,
    start: u64,
    respawn: u64,
    bulk: u64,
}

impl Sizes {
    pub(crate) fn full() -> Self {
        Sizes {
            apply_async: 500_000,
            map: 4 << 20,
            latency: 50_000,
            cpu_loop: 1_000_000_000,
            shared_sum_elements: 32 << 20, // 256 MiB
            queue: 2_000_000,
            pipe_rtt: 50_000,
            start: 10,
            respawn: 50,
            bulk: 64, // 512 MiB
        }
    }

    pub(crate) fn quick() -> Self {
        Sizes {
            apply_async: 200_000,
            map: 4 << 20,
            latency: 5_000,
            cpu_loop: 100_000_000,
            shared_sum_elements: 8 << 20, // 64 MiB
            queue: 200_000,
            pipe_rtt: 5_000,
            start: 3,
            respawn: 10,
            bulk: 8, // 64 MiB
        }
    }

    pub(crate) fn get(&self, w: Workload) -> u64 {
        match w {
            Workload::ApplyAsync => self.apply_async,
            Workload::Map => self.map,
            Workload::Latency => self.latency,
            Workload::CpuLoop => self.cpu_loop,
            Workload::SharedSum => self.shared_sum_elements,
            Workload::Queue => self.queue,
            Workload::PipeRtt => self.pipe_rtt,
            Workload::Start => self.start,
            Workload::Respawn => self.respawn,
            Workload::Bulk | Workload::BulkShared => self.bulk,
        }
    }

    pub(crate) fn set(&mut self, w: Workload, n: u64) {
        match w {
            Workload::ApplyAsync => self.apply_async = n,
            Workload::Map => self.map = n,
            Workload::Latency => self.latency = n,
            Workload::CpuLoop => self.cpu_loop = n,
            Workload::SharedSum => self.shared_sum_elements = n,
            Workload::Queue => self.queue = n,
            Workload::PipeRtt => self.pipe_rtt = n,
            Workload::Start => self.start = n,
            Workload::Respawn => self.respawn = n,
            Workload::Bulk | Workload::BulkShared => self.bulk = n,
        }
    }
}

/// One timed run.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) items: u64,
    pub(crate) seconds: f64,
    /// Items per second (bytes per second for the bulk workloads), the
    /// median round trip in ns for latency and pipe_rtt, the median time in
    /// ms for start and respawn.
    pub(crate) value: f64,
    /// For start and respawn: each timed event, in ms (for the p99).
    pub(crate) events_ms: Vec<f64>,
}

impl Sample {
    fn rate(items: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Sample {
            items,
            seconds,
            value: items as f64 / seconds.max(1e-12),
            events_ms: Vec::new(),
        }
    }

    /// A run of timed events (pool starts, replacements): their median.
    fn events(times: Vec<Duration>, elapsed: Duration) -> Self {
        let events_ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
        Sample {
            items: times.len() as u64,
            seconds: elapsed.as_secs_f64(),
            value: crate::stats::Summary::of(&events_ms).median,
            events_ms,
        }
    }
}

/// Data that several runs share, made once.
#[derive(Default)]
pub(crate) struct Inputs {
    map: Option<Vec<u64>>,
    array: Option<SharedArray<f64>>,
    /// The bulk workloads' pool and array (see `bulk.rs`).
    bulk: bulk::BulkInputs,
}

impl Inputs {
    /// `0..n` as a slice of the largest input made so far.
    fn map_input(&mut self, n: u64) -> &[u64] {
        let n = n as usize;
        if self.map.as_ref().map_or(0, Vec::len) < n {
            self.map = Some((0..n as u64).collect());
        }
        self.map.as_deref().map_or(&[], |m| &m[..n])
    }

    /// An array of at least `len` ones (the largest asked for so far).
    fn array(&mut self, len: u64) -> Result<SharedArray<f64>, CliError> {
        if let Some(a) = &self.array {
            if a.len() >= len as usize {
                return Ok(a.clone());
            }
        }
        self.array = None; // free the old one first
        let a = usize::try_from(len)
            .ok()
            .map(SharedArray::<f64>::new)
            .unwrap_or(Err(corepool::Error::InvalidConfig {
                what: "an array longer than this machine's address space".into(),
            }))
            .map_err(|e| memory::array_failed(len, &e))?;
        a.update_chunks(0..len as usize, |xs| xs.iter_mut().for_each(|x| *x = 1.0))?;
        self.array = Some(a.clone());
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_by_name() {
        assert_eq!(Workload::parse("map").unwrap(), Workload::Map);
        let err = Workload::parse("nope").unwrap_err().to_string();
        assert!(err.contains("apply_async"), "{err}");
    }
}
