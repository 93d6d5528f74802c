//! Where a task's outcome goes: the [`Outcome`] a worker sent back, the
//! [`Completion`] that receives it, and the [`Sink`] a task carries to name
//! its receiver.

use crate::error::Error;
use crate::shm::ring::{Claimed, Consumer};
use std::fmt;
use std::sync::Arc;

/// What a worker sent back for one task, before decoding.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The encoded result.
    Ok(crate::wire::Payload),
    /// The task failed.
    Err(Error),
}

/// Something that receives task outcomes. `tag` tells apart the tasks of one
/// receiver (the chunks of a `map`).
pub(super) trait Completion: Send + Sync {
    /// Delivers one outcome. Runs in the parent, outside the pool's lock.
    fn complete(&self, tag: u64, outcome: Outcome);

    /// Copies a successful result straight out of the result ring it
    /// arrived in, if this receiver can (a `map` of plain results taking
    /// its next chunk): no copy of it into a buffer first. Runs under the
    /// pool's lock, before the record is released: copy and validate, call
    /// nothing. When it returns true the result is delivered as
    /// `Outcome::Ok` of an empty payload, which the receiver knows to skip.
    fn absorb(&self, tag: u64, ring: &Consumer, record: &Claimed) -> bool {
        let _ = (tag, ring, record);
        false
    }

    /// Whether delivering an outcome here is over in moments, whatever it
    /// is: no callback, no decoder of the user's, nothing that may block.
    /// Waiters need not be told when such a delivery starts (they would
    /// only help collect while it lasts), only when it ends; nor is the
    /// delivering thread marked as running the pool's code (nothing of the
    /// user's runs that could wait on the pool).
    fn delivers_at_once(&self) -> bool {
        false
    }
}

/// Where a task's outcome goes.
#[derive(Clone)]
pub(super) struct Sink {
    pub target: Arc<dyn Completion>,
    pub tag: u64,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}
