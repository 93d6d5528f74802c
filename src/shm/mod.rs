//! Shared-memory building blocks: the sealed memfd [`segment`], the
//! single-producer/single-consumer byte [`ring`], spin-then-futex [`park`]ing,
//! and shared objects' [`handle`]s that travel between processes.
//!
//! They know nothing about pools, tasks or processes.

pub(crate) mod handle;
pub(crate) mod park;
pub(crate) mod ring;
pub(crate) mod segment;

pub(crate) use segment::Segment;
