//! What the ranks say to each other: message tags, the frames of tasks and
//! results, and a task's error as bytes. Every frame is parsed as untrusted
//! input: a short or malformed one is an [`Error::Decode`], never a panic.

use corepool::{Encoder, Error, ExitCause, Result, Wire};
use std::time::Duration;

/// Rank 0 → rank k: a control frame ([`Control`]).
pub(crate) const TAG_CONTROL: i32 = 1;
/// Rank 0 → rank k: a task; the argument bytes, then a [`TASK_TRAILER`].
pub(crate) const TAG_TASK: i32 = 2;
/// Rank k → rank 0: a task's outcome; its bytes, then a [`RESULT_TRAILER`].
pub(crate) const TAG_RESULT: i32 = 3;
/// Rank k → rank 0: `[broadcast id u64][the local array's handle]`.
pub(crate) const TAG_SHARED: i32 = 4;
/// Rank k → rank 0: rank k has stopped and sends nothing more.
pub(crate) const TAG_STOPPED: i32 = 5;
/// Both ways: the bare MPI measurements ([`Control::PingPong`],
/// [`Control::Stream`]), with plain blocking sends and receives.
pub(crate) const TAG_FLOOR: i32 = 6;
/// Both ways: the head of a message too large for one MPI message (MPI
/// counts are `int`s: 2 GiB - 1 bytes at most), `[its tag i32][its length
/// u64]`; its bytes follow as [`TAG_PIECE`] messages, in order
/// (`crate::transport::Transport::send`).
pub(crate) const TAG_PIECES: i32 = 7;
/// Both ways: the next piece of the message a [`TAG_PIECES`] head began.
pub(crate) const TAG_PIECE: i32 = 8;

/// The trailer of a task frame: unit id (u64), task bits (i64). A trailer,
/// not a header, so that the receiver truncates the frame into the
/// argument's bytes without moving them.
pub(crate) const TASK_TRAILER: usize = 16;
/// The trailer of a result frame: unit id (u64), status (u8: 0 ok, 1 error).
pub(crate) const RESULT_TRAILER: usize = 9;

/// A control frame's meaning.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Stop serving: end the local pool, answer [`TAG_STOPPED`], finalize.
    Shutdown,
    /// Enter `MPI_Bcast` from rank 0 for `bytes` bytes, one call per
    /// `piece` bytes (an MPI count is an `int`), keep them in a local
    /// shared array under `id`, and answer its handle ([`TAG_SHARED`]).
    Broadcast { id: u64, bytes: u64, piece: u64 },
    /// Echo `rounds` messages of `bytes` on [`TAG_FLOOR`], one at a time.
    PingPong { bytes: u64, rounds: u64 },
    /// Receive `rounds` messages of `bytes` on [`TAG_FLOOR`], then answer
    /// one empty message.
    Stream { bytes: u64, rounds: u64 },
}

impl Control {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Encoder::new();
        match *self {
            Control::Shutdown => (1u8, 0u64, 0u64, 0u64).encode(&mut out),
            Control::Broadcast { id, bytes, piece } => (2u8, id, bytes, piece).encode(&mut out),
            Control::PingPong { bytes, rounds } => (3u8, bytes, rounds, 0u64).encode(&mut out),
            Control::Stream { bytes, rounds } => (4u8, bytes, rounds, 0u64).encode(&mut out),
        }
        out.to_vec()
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<Self> {
        match decode_exact::<(u8, u64, u64, u64)>(bytes)? {
            (1, _, _, _) => Ok(Control::Shutdown),
            (2, id, bytes, piece) => Ok(Control::Broadcast { id, bytes, piece }),
            (3, bytes, rounds, _) => Ok(Control::PingPong { bytes, rounds }),
            (4, bytes, rounds, _) => Ok(Control::Stream { bytes, rounds }),
            (kind, _, _, _) => Err(bad(format!("unknown control frame {kind}"))),
        }
    }
}

fn bad(reason: String) -> Error {
    Error::Decode {
        type_name: "a corepool-mpi frame",
        reason,
    }
}

/// Decodes a value that must use up all of `bytes`.
pub(crate) fn decode_exact<T: Wire>(mut bytes: &[u8]) -> Result<T> {
    let value = T::decode(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(Error::Decode {
            type_name: std::any::type_name::<T>(),
            reason: format!("{} trailing bytes", bytes.len()),
        });
    }
    Ok(value)
}

fn split_trailer(frame: &[u8], trailer: usize) -> Result<(usize, &[u8])> {
    frame
        .len()
        .checked_sub(trailer)
        .map(|at| (at, &frame[at..]))
        .ok_or_else(|| bad(format!("{} bytes, shorter than its trailer", frame.len())))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Appends a task trailer to the argument bytes.
pub(crate) fn seal_task(mut arg: Vec<u8>, unit: u64, task_bits: i64) -> Vec<u8> {
    arg.extend_from_slice(&unit.to_le_bytes());
    arg.extend_from_slice(&task_bits.to_le_bytes());
    arg
}

/// Splits a task frame into (unit, task bits, argument bytes).
pub(crate) fn open_task(mut frame: Vec<u8>) -> Result<(u64, i64, Vec<u8>)> {
    let (unit, bits, at) = read_task_trailer(&frame)?;
    frame.truncate(at);
    Ok((unit, bits, frame))
}

/// A task frame's (unit, task bits, length of its argument bytes), read
/// where the frame lies (the argument stays where it was received).
pub(crate) fn read_task_trailer(frame: &[u8]) -> Result<(u64, i64, usize)> {
    let (at, trailer) = split_trailer(frame, TASK_TRAILER)?;
    Ok((u64_at(trailer, 0), u64_at(trailer, 8) as i64, at))
}

/// A result frame for `outcome`.
pub(crate) fn seal_result(unit: u64, outcome: Result<Vec<u8>>, rank: i32) -> Vec<u8> {
    let (mut bytes, status) = match outcome {
        Ok(bytes) => (bytes, 0u8),
        Err(e) => (error_to_bytes(&e, rank), 1u8),
    };
    bytes.extend_from_slice(&unit.to_le_bytes());
    bytes.push(status);
    bytes
}

/// Splits a result frame from rank `from` into (unit, outcome).
pub(crate) fn open_result(mut frame: Vec<u8>, from: u32) -> Result<(u64, Result<Vec<u8>>)> {
    let (at, trailer) = split_trailer(&frame, RESULT_TRAILER)?;
    let unit = u64_at(trailer, 0);
    let status = trailer[8];
    frame.truncate(at);
    match status {
        0 => Ok((unit, Ok(frame))),
        1 => Ok((unit, Err(with_rank(error_from_bytes(&frame)?, from)))),
        other => Err(bad(format!("result status {other}"))),
    }
}

/// A worker's death or a task timeout on rank `rank` names the rank (a
/// dead worker's pid is of that rank's node); other errors unchanged.
fn with_rank(err: Error, rank: u32) -> Error {
    match err {
        Error::WorkerDied { pid, cause, .. } => Error::WorkerDied {
            pid,
            cause,
            rank: Some(rank),
        },
        Error::TaskTimedOut { after, .. } => Error::TaskTimedOut {
            after,
            rank: Some(rank),
        },
        other => other,
    }
}

/// `err` of a task rank 0's own pool ran, as the cluster reports it: named
/// the way a serving rank's errors are ([`error_to_bytes`], [`open_result`]),
/// so that where a task failed never depends on which rank took it.
pub(crate) fn on_rank_zero(err: Error) -> Error {
    let on = |text: String| on_rank(&text, 0);
    match with_rank(err, 0) {
        Error::Panicked { message } => Error::Panicked {
            message: on(message),
        },
        Error::Decode { type_name, reason } => Error::Decode {
            type_name,
            reason: on(reason),
        },
        Error::Encode { type_name, reason } => Error::Encode {
            type_name,
            reason: on(reason),
        },
        other => other,
    }
}

/// Where a worker's panic report starts its backtrace (with
/// `RUST_BACKTRACE` set: corepool's panic hook in the worker).
const BACKTRACE_START: &str = "\n\nchild process backtrace:";

/// `text` labelled "(on rank N)": after the message, before a backtrace
/// (which runs to tens of lines: the label at its end went unseen, a user
/// trial).
fn on_rank(text: &str, rank: impl std::fmt::Display) -> String {
    match text.find(BACKTRACE_START) {
        Some(at) => format!("{} (on rank {rank}){}", &text[..at], &text[at..]),
        None => format!("{text} (on rank {rank})"),
    }
}

/// A task's error as bytes: `(code, message, a, b)`. The message of a
/// panic or a failure names the rank it happened on.
pub(crate) fn error_to_bytes(err: &Error, rank: i32) -> Vec<u8> {
    let on = |text: &str| on_rank(text, rank);
    let (code, message, a, b): (u8, String, i64, i64) = match err {
        Error::Panicked { message } => (1, on(message), 0, 0),
        Error::WorkerDied {
            pid,
            cause: ExitCause::Signal(sig),
            ..
        } => (2, String::new(), i64::from(*pid), i64::from(*sig)),
        Error::WorkerDied {
            pid,
            cause: ExitCause::Code(code),
            ..
        } => (3, String::new(), i64::from(*pid), i64::from(*code)),
        Error::WorkerDied {
            pid,
            cause: ExitCause::Unknown,
            ..
        } => (11, String::new(), i64::from(*pid), 0),
        Error::Decode { type_name, reason } => (4, on(&format!("{type_name}: {reason}")), 0, 0),
        Error::ResultTooLarge { size, max } => (5, String::new(), wide(*size), wide(*max)),
        Error::ArgumentTooLarge { size, max } => (6, String::new(), wide(*size), wide(*max)),
        Error::TaskTimedOut { after, .. } => (7, String::new(), wide(after.as_nanos()), 0),
        Error::Cancelled => (8, String::new(), 0, 0),
        Error::PoolClosed => (9, String::new(), 0, 0),
        Error::Encode { type_name, reason } => (10, on(&format!("{type_name}: {reason}")), 0, 0),
        other => (0, on(&other.to_string()), 0, 0),
    };
    let mut out = Encoder::new();
    (code, message, a, b).encode(&mut out);
    out.to_vec()
}

/// `v` as an `i64`, saturated (no value of a real error comes near).
fn wide<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// The error [`error_to_bytes`] wrote. Types are named by the serving rank
/// in the message, since an error's `type_name` is a `&'static str`.
pub(crate) fn error_from_bytes(bytes: &[u8]) -> Result<Error> {
    let (code, message, a, b) = decode_exact::<(u8, String, i64, i64)>(bytes)?;
    let int = |v: i64| i32::try_from(v).map_err(|_| bad(format!("{v} out of range")));
    let size = |v: i64| usize::try_from(v).map_err(|_| bad(format!("{v} out of range")));
    Ok(match code {
        1 => Error::Panicked { message },
        2 => Error::WorkerDied {
            pid: int(a)?,
            cause: ExitCause::Signal(int(b)?),
            rank: None,
        },
        3 => Error::WorkerDied {
            pid: int(a)?,
            cause: ExitCause::Code(int(b)?),
            rank: None,
        },
        4 => Error::Decode {
            type_name: "a value on a serving rank",
            reason: message,
        },
        5 => Error::ResultTooLarge {
            size: size(a)?,
            max: size(b)?,
        },
        6 => Error::ArgumentTooLarge {
            size: size(a)?,
            max: size(b)?,
        },
        7 => Error::TaskTimedOut {
            after: Duration::from_nanos(a.max(0) as u64),
            rank: None,
        },
        8 => Error::Cancelled,
        9 => Error::PoolClosed,
        11 => Error::WorkerDied {
            pid: int(a)?,
            cause: ExitCause::Unknown,
            rank: None,
        },
        10 => Error::Encode {
            type_name: "a value on a serving rank",
            reason: message,
        },
        0 => Error::Os {
            op: "a task on a serving rank",
            source: std::io::Error::other(message),
        },
        other => return Err(bad(format!("error code {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_short_ones_are_refused() {
        let frame = seal_task(vec![1, 2, 3], 7, -42);
        assert_eq!(read_task_trailer(&frame).unwrap(), (7, -42, 3));
        assert_eq!(open_task(frame).unwrap(), (7, -42, vec![1, 2, 3]));
        assert!(read_task_trailer(&[0; 15]).is_err());
        assert!(open_task(vec![0; 3]).is_err());
        let ok = seal_result(9, Ok(vec![5]), 1);
        assert_eq!(open_result(ok, 1).unwrap().1.unwrap(), vec![5]);
        let panicked = Error::Panicked {
            message: "boom".into(),
        };
        let (unit, err) = open_result(seal_result(3, Err(panicked), 2), 2).unwrap();
        assert_eq!(unit, 3);
        let err = err.unwrap_err();
        assert!(
            matches!(&err, Error::Panicked { message } if message.contains("boom") && message.contains("rank 2"))
        );
        assert!(open_result(vec![0; 9], 1).is_ok());
        let mut bad_status = vec![0; 9];
        bad_status[8] = 7;
        assert!(open_result(bad_status, 1).is_err());
        assert_eq!(
            Control::parse(&Control::Shutdown.to_bytes()).unwrap(),
            Control::Shutdown
        );
        assert!(Control::parse(&[9; 25]).is_err());
    }

    #[test]
    fn errors_keep_their_variant() {
        for cause in [ExitCause::Signal(9), ExitCause::Code(3), ExitCause::Unknown] {
            let died = |rank| Error::WorkerDied {
                pid: 12,
                cause: cause.clone(),
                rank,
            };
            let frame = seal_result(5, Err(died(None)), 1);
            let (_, got) = open_result(frame, 1).unwrap();
            assert_eq!(got.unwrap_err(), died(Some(1)), "the rank it came from");
            assert!(died(Some(1))
                .to_string()
                .contains("process 12 on rank 1 died"));
            assert_eq!(on_rank_zero(died(None)), died(Some(0)));
        }
        let panicked = on_rank_zero(Error::Panicked {
            message: "boom".into(),
        });
        assert!(
            panicked.to_string().contains("boom (on rank 0)"),
            "{panicked}"
        );
        // A timeout names the rank whose pool timed the task out (trial 28:
        // it did not say which).
        let timed_out = |rank| Error::TaskTimedOut {
            after: Duration::from_millis(250),
            rank,
        };
        let (_, got) = open_result(seal_result(3, Err(timed_out(None)), 2), 2).unwrap();
        assert_eq!(got.unwrap_err(), timed_out(Some(2)));
        assert!(timed_out(Some(2))
            .to_string()
            .contains("task timeout of 250ms on rank 2"));
        assert_eq!(on_rank_zero(timed_out(None)), timed_out(Some(0)));
        assert!(!timed_out(None).to_string().contains("on rank"));
        assert_eq!(
            error_from_bytes(&error_to_bytes(&Error::Cancelled, 1)).unwrap(),
            Error::Cancelled
        );
        assert!(error_from_bytes(&[1, 2]).is_err());
        // The label comes before a backtrace, not after it.
        let traced = Error::Panicked {
            message: format!("boom (at x.rs:1){BACKTRACE_START}\n  0: frame"),
        };
        let (_, got) = open_result(seal_result(1, Err(traced.clone()), 2), 2).unwrap();
        let text = got.unwrap_err().to_string();
        assert!(
            text.contains("boom (at x.rs:1) (on rank 2)\n\nchild process backtrace:"),
            "{text}"
        );
        let text = on_rank_zero(traced).to_string();
        assert!(text.contains("(at x.rs:1) (on rank 0)\n"), "{text}");
    }
}
