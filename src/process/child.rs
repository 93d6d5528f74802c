//! The child side of a [`Process`](super::Process): read the function and
//! argument the parent wrote, run it, write the outcome, exit.

use super::segment::{self, status};
use super::PROCESS_ENV;
use crate::child::fingerprint::fingerprint;
use crate::child::panic::{fit_message, install_panic_hook, take_panic_message};
use crate::shm::Segment;
use crate::sys;
use crate::wire::{task, Encoder};
use std::io::Write;
use std::os::fd::RawFd;

/// In a process started as a `Process` child (it has [`PROCESS_ENV`]): run
/// its function and return the exit status. `None` elsewhere.
pub(crate) fn enter() -> Option<i32> {
    let token = std::env::var_os(PROCESS_ENV)?;
    std::env::remove_var(PROCESS_ENV);
    if sys::is_secure_execution() {
        eprintln!(
            "corepool: refusing to run a Process child in a setuid, setgid or setcap program"
        );
        return Some(101);
    }
    Some(serve_child(token.to_str().unwrap_or("")))
}

/// This child's segment, for `testing::process_memory` (a test hook).
#[cfg(feature = "fault-injection")]
static OWN_SEGMENT: std::sync::OnceLock<std::sync::Arc<Segment>> = std::sync::OnceLock::new();

/// In a `Process` child: its segment (header, argument, outcome words and
/// result room), which it may write anything into. `None` elsewhere.
#[cfg(feature = "fault-injection")]
pub(crate) fn own_segment() -> Option<&'static Segment> {
    OWN_SEGMENT.get().map(|seg| &**seg)
}

/// A start failure before the child found its task, so the parent cannot
/// be told why: say it on stderr rather than exit 101 in silence.
fn stray(why: &str) -> i32 {
    eprintln!(
        "corepool: {PROCESS_ENV} is set but {why}; this process is not a corepool Process child (unset {PROCESS_ENV}), exiting with status 101"
    );
    101
}

/// In a `Process` child: run the function the parent named and exit.
fn serve_child(token: &str) -> i32 {
    let mut parts = token.split(':');
    let (Some("v1"), Some(fd), Some(parent)) = (parts.next(), parts.next(), parts.next()) else {
        return stray("its value is malformed");
    };
    let (Ok(fd), Ok(parent)) = (fd.parse::<RawFd>(), parent.parse::<i32>()) else {
        return stray("its value is malformed");
    };
    if sys::getppid() != parent {
        if sys::process_has_ended(parent) {
            // The program ended while we started (its running `Process`es
            // are killed at its end; we were not yet there to be killed):
            // nobody waits for us, and nothing is wrong. Leave quietly.
            return 101;
        }
        // Our parent is someone else: the variable was inherited or set.
        return stray("its parent is not the one that started it");
    }
    let _ = sys::set_cloexec(fd);
    // SAFETY: the parent passed this descriptor to us alone.
    let Ok(seg) = (unsafe { Segment::open_raw(fd) }) else {
        return stray("its descriptor is not a process's shared memory");
    };
    let seg = std::sync::Arc::new(seg);
    #[cfg(feature = "fault-injection")]
    let _ = OWN_SEGMENT.set(seg.clone());
    let Some(header) = segment::read_header(&seg) else {
        return stray("its shared memory holds no task");
    };
    if header.fingerprint != fingerprint() {
        eprintln!(
            "corepool: this process runs a different build than its parent (build fingerprint {:#x} in the parent, {:#x} here): the executable was rebuilt or replaced in place since the parent started; not running the task",
            header.fingerprint,
            fingerprint()
        );
        return 101;
    }
    // Who we are, before the task can ask (`crate::current_process`).
    let identity = segment::read_identity(&seg, &header).unwrap_or_default();
    super::introspect::record_child(&identity, parent);
    let Some(input) = segment::read_argument(&seg, &header) else {
        return 101;
    };
    install_panic_hook();
    // SAFETY: same binary (fingerprint checked); the offset comes from `offset_of`.
    let trampoline = unsafe { task::from_offset(header.trampoline) };
    let mut out = Encoder::new();
    // Once the argument is decoded (its objects received, their in-flight
    // counts ended here), the parent must not take those counts back if we
    // die: say so before the function runs.
    let decoded = seg.clone();
    task::after_next_decode(move || segment::mark_argument_decoded(&decoded));
    // Under `panic = "abort"`, the hook writes the PANICKED outcome
    // through this before the process ends.
    let (report_seg, report_header) = (seg.clone(), header);
    let report = move |text: &str| {
        let mut message = text.as_bytes().to_vec();
        fit_message(&mut message, report_header.result_cap as usize);
        segment::write_outcome(&report_seg, &report_header, status::PANICKED, &message, 0);
        true
    };
    let outcome = crate::child::panic::with_abort_report(report, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            trampoline(&input, &mut out).and_then(|()| out.check())
        }))
    });
    let mut too_large_size = 0;
    // What the result carries (shared objects it names, a spill) counts as
    // sent once the outcome is written; we then linger for its receiver.
    let mut carried = out.take_carried();
    let (code, exit) = match outcome {
        Ok(Ok(())) if out.len() <= header.result_cap as usize => (status::RETURNED, 0),
        Ok(Ok(())) => match crate::shm::spill::write(&out) {
            Ok((handle, mut spilled)) if handle.len() <= header.result_cap as usize => {
                out.clear();
                out.extend_from_slice(&handle);
                carried.keep.append(&mut spilled.keep);
                carried.transits.append(&mut spilled.transits);
                (status::SPILLED, 0)
            }
            // No memory for it (or no room for a handle): a real limit.
            _ => {
                too_large_size = out.len();
                out.clear();
                (status::TOO_LARGE, 0)
            }
        },
        Ok(Err(crate::Error::Encode { type_name, reason })) => {
            // The encoder's own message, for the parent's `Error::Encode`.
            out.clear();
            out.extend_from_slice(format!("{type_name}: {reason}").as_bytes());
            (status::NOT_ENCODED, 1)
        }
        Ok(Err(e)) => {
            out.clear();
            out.extend_from_slice(e.to_string().as_bytes());
            (status::FAILED, 1)
        }
        Err(_) => {
            out.clear();
            out.extend_from_slice(take_panic_message().as_bytes());
            (status::PANICKED, 1)
        }
    };
    if code != status::RETURNED {
        fit_message(&mut out, header.result_cap as usize);
    }
    segment::write_outcome(&seg, &header, code, &out, too_large_size);
    if code == status::PANICKED {
        // On stderr as well, as a panicking thread's message is, and as
        // Python prints a failing `Process`'s traceback: a child that nobody
        // joins failed unseen (a user trial). After the outcome, and without
        // `eprintln!` (which panics when stderr is a closed pipe or a full
        // disk): `join` gets `Error::Panicked` whatever stderr is.
        let me = crate::current_process();
        let _ = writeln!(
            std::io::stderr(),
            "corepool: process {:?} (pid {}) panicked: {}",
            me.name,
            me.pid,
            String::from_utf8_lossy(&out)
        );
    }
    if code == status::RETURNED || code == status::SPILLED {
        carried.sent();
    } else {
        // No result went out: pipe ends in it go back to us (and close as
        // we exit).
        carried.not_sent();
    }
    drop(carried);
    drop(out);
    // The parent reads the outcome as soon as it is written (`join`), which
    // ends these transits; bounded, so that a parent that never joins does
    // not keep us.
    crate::shm::handle::linger_at_exit(crate::shm::handle::EXIT_LINGER);
    exit
}
