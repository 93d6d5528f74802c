//! Point-to-point messages of bytes over MPI, for the one thread that makes
//! MPI calls: non-blocking sends (so that two ranks sending each other large
//! messages at once never deadlock), polled receives.

use crate::comm::SHUTDOWN_BOUND;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Rank;
use std::time::Instant;

/// A send in flight and the buffer it reads.
struct InFlight {
    request: Option<Request<'static, [u8]>>,
    /// The buffer `request` reads, leaked for its duration and freed once
    /// the request has completed.
    buffer: *mut [u8],
}

/// The world communicator and this rank's sends in flight. Not `Send`: it
/// lives and dies on the MPI thread.
pub(crate) struct Transport {
    pub(crate) world: SimpleCommunicator,
    sends: Vec<InFlight>,
}

impl Transport {
    pub(crate) fn new(world: SimpleCommunicator) -> Self {
        Self {
            world,
            sends: Vec::new(),
        }
    }

    /// Starts sending `bytes` to `to` with `tag`; never blocks.
    pub(crate) fn send(&mut self, to: Rank, tag: i32, bytes: Vec<u8>) {
        let buffer: *mut [u8] = Box::into_raw(bytes.into_boxed_slice());
        // SAFETY: `buffer` comes from `Box::into_raw` just above and is only
        // freed in `progress` once MPI has finished reading it (its request
        // completed), so the reference stays valid for as long as MPI uses
        // it; nothing writes the buffer meanwhile.
        let data: &'static [u8] = unsafe { &*buffer };
        let request =
            self.world
                .process_at_rank(to)
                .immediate_send_with_tag(StaticScope, data, tag);
        self.sends.push(InFlight {
            request: Some(request),
            buffer,
        });
    }

    /// Completes the sends that are done; returns whether any did.
    pub(crate) fn progress(&mut self) -> bool {
        let before = self.sends.len();
        self.sends.retain_mut(|send| {
            let Some(request) = send.request.take() else {
                return false;
            };
            match request.test() {
                Ok(_) => {
                    // SAFETY: the request has completed, so MPI no longer
                    // reads the buffer, and the only reference to it (held
                    // by the request) is gone: the box is ours to free.
                    drop(unsafe { Box::from_raw(send.buffer) });
                    false
                }
                Err(request) => {
                    send.request = Some(request);
                    true
                }
            }
        });
        self.sends.len() != before
    }

    /// Waits until every send has completed, at most [`SHUTDOWN_BOUND`]:
    /// past it the receiver hangs alive (a dead one ends the job through
    /// the launcher), and the job is ended with `MPI_Abort`.
    pub(crate) fn flush(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_BOUND;
        while !self.sends.is_empty() {
            if !self.progress() {
                if Instant::now() > deadline {
                    eprintln!(
                        "corepool-mpi: rank {}: {} sends not taken within {SHUTDOWN_BOUND:?}; ending the job",
                        self.world.rank(),
                        self.sends.len()
                    );
                    self.world.abort(1);
                }
                std::thread::yield_now();
            }
        }
    }

    /// The next message that has arrived, if any: (source, tag, bytes).
    pub(crate) fn receive(&self) -> Option<(Rank, i32, Vec<u8>)> {
        let matched = self.world.any_process().immediate_matched_probe()?;
        let (bytes, status) = matched.matched_receive_vec::<u8>();
        Some((status.source_rank(), status.tag(), bytes))
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.flush();
    }
}
