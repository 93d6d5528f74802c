//! Panic capture in a child: a task's panic message, location and, when
//! `RUST_BACKTRACE` asks for one, backtrace travel to the parent as the
//! task's error instead of being printed by the child; a message too long
//! for the room it travels in is cut, and says so. In a program built with
//! `panic = "abort"` the child aborts as the hook returns: the hook sends
//! the message as the running task's outcome itself ([`with_abort_report`]),
//! or prints it on stderr outside a task.

use std::cell::RefCell;

/// What reports a panic's message to the parent before the process aborts
/// (see [`with_abort_report`]); true when it was reported.
type AbortReport = Box<dyn FnMut(&str) -> bool>;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The running task's [`AbortReport`], under `panic = "abort"`.
    static BEFORE_ABORT: RefCell<Option<AbortReport>> = const { RefCell::new(None) };
}

/// Runs `task`; should it panic in a program built with `panic = "abort"`
/// (where no `catch_unwind` ever returns: the process aborts as the hook
/// returns), the hook first gives the panic's text to `report`, which
/// writes the task's outcome where the parent reads it, so that the
/// caller gets `Error::Panicked` as it would with unwinding. With
/// `panic = "unwind"` `report` is never kept, nor called.
pub(crate) fn with_abort_report<R>(
    report: impl FnMut(&str) -> bool + 'static,
    task: impl FnOnce() -> R,
) -> R {
    if !cfg!(panic = "abort") {
        return task();
    }
    let _ = BEFORE_ABORT.try_with(|r| *r.borrow_mut() = Some(Box::new(report)));
    let result = task();
    let _ = BEFORE_ABORT.try_with(|r| r.borrow_mut().take());
    result
}

/// Under `panic = "abort"`: the running task's report, given `text`;
/// whether it reported.
fn report_before_abort(text: &str) -> bool {
    BEFORE_ABORT
        .try_with(|r| match r.try_borrow_mut() {
            Ok(mut report) => report.as_mut().is_some_and(|report| report(text)),
            Err(_) => false,
        })
        .unwrap_or(false)
}

/// Replaces the default panic hook: the hook keeps the message, location
/// and (if `RUST_BACKTRACE` is set and not `0`, as for the default hook) a
/// backtrace for [`take_panic_message`] instead of printing them.
pub(crate) fn install_panic_hook() {
    // Read once: the child inherits the parent's environment at its start.
    let with_backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "Box<dyn Any>".to_string());
        let mut text = match info.location() {
            Some(loc) => format!("{message} (at {}:{})", loc.file(), loc.line()),
            None => message,
        };
        if with_backtrace {
            let backtrace = std::backtrace::Backtrace::force_capture();
            text.push_str(&format!("\n\nchild process backtrace:\n{backtrace}"));
        }
        if cfg!(panic = "abort") {
            // The process aborts as this hook returns: the task's report
            // sends the message to the parent as the task's outcome; with
            // none (a panic outside a task), it goes where the default
            // hook's would.
            if report_before_abort(&text) {
                return;
            }
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "corepool child process {} panicked, and this program is built with `panic = \"abort\"`: {text}",
                std::process::id()
            );
            return;
        }
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
    }));
}

/// The message of the last panic on this thread, once.
pub(crate) fn take_panic_message() -> String {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Cuts `message` (UTF-8 text) to at most `room` bytes, on a character
/// boundary; if anything was cut, the end says how much
/// (`… [cut: N bytes more]`), so that nobody takes a cut message for the
/// whole one.
pub(crate) fn fit_message(message: &mut Vec<u8>, room: usize) {
    let total = message.len();
    if total <= room {
        return;
    }
    // The marker for `total` is at least as long as the one written, which
    // counts fewer bytes: reserve that much.
    let longest_marker = cut_marker(total).len();
    let mut keep = room.saturating_sub(longest_marker);
    while keep > 0 && !is_char_start(message[keep]) {
        keep -= 1;
    }
    message.truncate(keep);
    if room >= longest_marker {
        message.extend_from_slice(cut_marker(total - keep).as_bytes());
    }
}

fn cut_marker(bytes_cut: usize) -> String {
    format!("… [cut: {bytes_cut} bytes more]")
}

/// Whether `byte` starts a UTF-8 character (is not a continuation byte).
fn is_char_start(byte: u8) -> bool {
    byte & 0xC0 != 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_fits_is_left_alone() {
        let mut m = b"short".to_vec();
        fit_message(&mut m, 5);
        assert_eq!(m, b"short");
    }

    #[test]
    fn a_cut_message_says_how_much_was_cut_and_fits() {
        let mut m = "x".repeat(1000).into_bytes();
        fit_message(&mut m, 100);
        let text = String::from_utf8(m).unwrap();
        assert!(text.len() <= 100, "{}", text.len());
        let kept = text.find('…').unwrap();
        assert!(text.ends_with(&format!("… [cut: {} bytes more]", 1000 - kept)));
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        for room in 0..80 {
            let mut m = "é€😀".repeat(20).into_bytes();
            fit_message(&mut m, room);
            assert!(m.len() <= room);
            assert!(String::from_utf8(m).is_ok(), "room {room}");
        }
    }
}
