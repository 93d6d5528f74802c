//! Shared-memory building blocks: the sealed memfd [`segment`], the
//! single-producer/single-consumer byte [`ring`], the many-producer,
//! many-consumer byte queue [`mpmc`], spin-then-futex [`park`]ing and the
//! futex [`event`] count, the [`owner`] tags and liveness rule for claims
//! that dead processes may leave behind, shared objects' [`handle`]s that travel between
//! processes (and how long they live) and the checks that open a [`peer`]'s
//! memfd by one, and [`spill`]s, the one-off segments
//! that carry values too large for their message, a queue's [`values`]
//! file, where its values too large for a slot wait, and a pool's argument
//! [`arena`], one memfd its large task arguments are copied into.
//!
//! They know nothing about pools, tasks or processes.

pub(crate) mod arena;
pub(crate) mod event;
pub(crate) mod handle;
pub(crate) mod mpmc;
pub(crate) mod owner;
pub(crate) mod park;
pub(crate) mod peer;
pub(crate) mod ring;
pub(crate) mod segment;
pub(crate) mod spill;
pub(crate) mod values;

pub(crate) use segment::Segment;

use crate::error::Error;

/// A decode error for `what`, named as the user knows it ("queue value",
/// "spilled result"; the message reads "could not decode {what}"): the
/// path of a type internal to corepool would mean nothing to them.
pub(crate) fn decode_failed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Decode {
        type_name: what,
        reason: reason.into(),
    }
}

/// `err` with the thing that failed to decode renamed to `what` (see
/// [`decode_failed`]); any other error as it is.
pub(crate) fn named(what: &'static str, err: Error) -> Error {
    match err {
        Error::Decode { reason, .. } => decode_failed(what, reason),
        other => other,
    }
}
