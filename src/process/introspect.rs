//! The `Process` side of introspection: which children are running
//! ([`active_children`], Python's `multiprocessing.active_children()`), and
//! the identity a parent hands a child in its segment, which the child
//! records for [`crate::current_process`] and [`crate::parent_process`].

use super::reaper::Exit;
use super::segment::IDENTITY_MAX;
use crate::identity::{ProcessInfo, ProcessKind};
use std::sync::{Arc, Mutex};

/// A `Process` this process started, for [`active_children`].
struct Child {
    info: ProcessInfo,
    exit: Arc<Exit>,
}

/// Every `Process` started here that had not ended when last looked at.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Notes a process just started, forgetting those that ended meanwhile (so
/// a program that never asks keeps the list short).
pub(super) fn register(pid: i32, name: &str, cpu: Option<usize>, exit: Arc<Exit>) {
    let mut children = crate::sync::lock(&CHILDREN);
    children.retain(|c| !c.exit.ended());
    children.push(Child {
        info: ProcessInfo {
            pid,
            name: name.to_string(),
            kind: ProcessKind::Process,
            cpu,
        },
        exit,
    });
}

/// Forgets a child this process has just killed because its daemon handle
/// dropped: nobody can join it any more, and it is gone for the program's
/// purposes even before the process thread reaps it (a user trial saw
/// `active_children` still list it just after the drop).
pub(super) fn forget(exit: &Arc<Exit>) {
    crate::sync::lock(&CHILDREN).retain(|c| !Arc::ptr_eq(&c.exit, exit) && !c.exit.ended());
}

/// The [`Process`](crate::Process) children of this process that are still
/// running (Python's `active_children()`), in the order they started.
///
/// Like Python's, it forgets children that have ended; unlike Python's, it
/// need not reap them: the process thread reaps each child the moment it
/// exits, whether or not anyone asks. Only `Process` children are listed,
/// not pool workers: a [`Pool`](crate::Pool) owns its workers (it restarts
/// them, and [`Pool::pids`](crate::Pool::pids) lists them), and a worker
/// is no handle of yours to join or kill. A child counts as running until
/// it has been reaped, so one that has just exited may still be listed for
/// a moment; a daemon whose handle dropped (which kills it) is not listed
/// from the drop on.
///
/// ```
/// use corepool::Process;
/// use std::time::Duration;
///
/// fn spin(_: ()) {
///     loop {
///         std::hint::spin_loop()
///     }
/// }
///
/// fn main() -> corepool::Result<()> {
///     let running = Process::builder().name("spinner").start(spin, ())?;
///     let done = Process::start(|x: u8| x, 1)?;
///     assert!(done.join_timeout(Duration::from_secs(60)));
///     let names: Vec<String> = corepool::active_children().into_iter().map(|c| c.name).collect();
///     assert_eq!(names, ["spinner"]);
///     running.kill()?;
///     assert!(running.join_timeout(Duration::from_secs(60)));
///     assert!(corepool::active_children().is_empty());
///     Ok(())
/// }
/// ```
pub fn active_children() -> Vec<ProcessInfo> {
    let mut children = crate::sync::lock(&CHILDREN);
    children.retain(|c| !c.exit.ended());
    children.iter().map(|c| c.info.clone()).collect()
}

/// The bytes each of a child's two identity strings may take: two length
/// words of 8 bytes, a tag byte, and the two strings fill the page.
pub(super) const IDENTITY_ROOM: usize = (IDENTITY_MAX - 32) / 2;

// A name of `NAME_MAX` bytes fits whole, also inside the description a
// child gives its own children (`<kind>,<cpu>,<name>`, each NUL of the name
// three bytes there).
const _: () = assert!(3 * super::builder::NAME_MAX + 64 <= IDENTITY_ROOM);

/// Parent: the identity bytes for a child named `name` (`None`: the
/// default): its name and this process's description, each cut so that
/// both fit the segment.
pub(super) fn identity_for_child(name: Option<&str>) -> Vec<u8> {
    let cut = |s: &str, max: usize| -> String {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    // `start` refused a name longer than `NAME_MAX`, which fits the room
    // whole; the cut is a last guard for the description.
    let identity = (
        name.map(|n| cut(n, IDENTITY_ROOM)),
        cut(&crate::identity::describe_current(), IDENTITY_ROOM),
    );
    // Strings always encode; nothing is carried.
    crate::wire::encode_carried(&identity)
        .map(|(bytes, _)| bytes)
        .unwrap_or_default()
}

/// Child: records who it is from the identity bytes its parent (`parent`)
/// wrote; bytes that do not decode leave the defaults (`Process-<pid>`, no
/// parent description).
pub(super) fn record_child(identity: &[u8], parent: i32) {
    let (name, parent_description) =
        match crate::wire::decode_exact::<(Option<String>, String)>(identity) {
            Ok((name, description)) => (name, Some(description)),
            Err(_) => (None, None),
        };
    crate::identity::record_child(
        ProcessKind::Process,
        name,
        parent,
        parent_description.as_deref(),
    );
}
