//! Who this process is, and who started it: [`current_process`] and
//! [`parent_process`], Python's `multiprocessing.current_process()` and
//! `parent_process()`.
//!
//! A child records its identity once, on its way in, before any task runs
//! (the pool worker's `serve`, the `Process` child's entry); a process that
//! recorded nothing is the main process. The parent's identity travels to
//! the child as a short [description](describe_current) in the worker's
//! token or the process's segment.

use crate::error::Result;
use crate::wire::{decode_error, Encoder, Wire};
use std::sync::OnceLock;

/// What a process is, and its place in the family: the answer of
/// [`current_process`], [`parent_process`] and
/// [`active_children`](crate::active_children).
///
/// ```
/// let me = corepool::current_process();
/// assert_eq!(me.pid, std::process::id() as i32);
/// assert_eq!(me.name, "MainProcess");
/// assert_eq!(me.kind, corepool::ProcessKind::Main);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// Its process id.
    pub pid: i32,
    /// `"MainProcess"` for the main process, `"PoolWorker-<index>"` for a
    /// pool worker, the [`ProcessBuilder::name`](crate::ProcessBuilder::name)
    /// (default `"Process-<pid>"`) for a [`Process`](crate::Process).
    pub name: String,
    /// Main process, pool worker or `Process`.
    pub kind: ProcessKind,
    /// The one CPU it may run on, when its affinity allows just one (a
    /// pinned pool worker, a process started with
    /// [`ProcessBuilder::cpu`](crate::ProcessBuilder::cpu)); `None` when it
    /// may run on several. A child reads it when it starts; the main
    /// process when asked, from its main thread's affinity.
    pub cpu: Option<usize>,
}

/// Which kind of process a [`ProcessInfo`] describes.
///
/// ```
/// use corepool::{Pool, ProcessKind};
///
/// let pool = Pool::builder().workers(1).build()?;
/// let kind = pool.apply(|_: ()| corepool::current_process().kind, ())?;
/// assert_eq!(kind, ProcessKind::PoolWorker { index: 0 });
/// # Ok::<(), corepool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessKind {
    /// The program as it was started: neither a worker nor a `Process`.
    Main,
    /// A pool worker, in slot `index` of its pool (a restarted worker keeps
    /// its slot's index).
    PoolWorker {
        /// The worker's slot, from 0.
        index: usize,
    },
    /// A [`Process`](crate::Process) child.
    Process,
}

/// Crosses processes as `(kind, index)`: a task can report where it ran.
impl Wire for ProcessKind {
    fn encode(&self, out: &mut Encoder) {
        match *self {
            ProcessKind::Main => (0u8, 0usize).encode(out),
            ProcessKind::PoolWorker { index } => (1u8, index).encode(out),
            ProcessKind::Process => (2u8, 0usize).encode(out),
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        match <(u8, usize)>::decode(input)? {
            (0, _) => Ok(ProcessKind::Main),
            (1, index) => Ok(ProcessKind::PoolWorker { index }),
            (2, _) => Ok(ProcessKind::Process),
            (tag, _) => Err(decode_error::<Self>(format!("bad kind {tag}"))),
        }
    }
}

/// Crosses processes field by field: a task or a child can report who it is.
impl Wire for ProcessInfo {
    fn encode(&self, out: &mut Encoder) {
        self.pid.encode(out);
        self.name.encode(out);
        self.kind.encode(out);
        self.cpu.encode(out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        Ok(ProcessInfo {
            pid: i32::decode(input)?,
            name: String::decode(input)?,
            kind: ProcessKind::decode(input)?,
            cpu: Option::<usize>::decode(input)?,
        })
    }
}

/// This process and its parent, recorded once by a child on its way in.
static RECORDED: OnceLock<(ProcessInfo, Option<ProcessInfo>)> = OnceLock::new();

/// The one CPU process `pid`'s (main thread's) affinity allows, if just one.
fn only_cpu_of(pid: i32) -> Option<usize> {
    match crate::sys::affinity_of(pid).ok()?.as_slice() {
        [cpu] => Some(*cpu),
        _ => None,
    }
}

/// The process this code runs in (Python's `current_process()`): the main
/// process, a pool worker running a task, or a [`Process`](crate::Process)
/// child.
///
/// ```
/// use corepool::{Process, ProcessKind};
///
/// fn main() -> corepool::Result<()> {
///     let me = corepool::current_process();
///     assert_eq!((me.name.as_str(), me.kind), ("MainProcess", ProcessKind::Main));
///
///     let p = Process::builder()
///         .name("reporter")
///         .start(|_: ()| corepool::current_process(), ())?;
///     let pid = p.pid();
///     let child = p.join()?;
///     assert_eq!((child.pid, child.name.as_str()), (pid, "reporter"));
///     assert_eq!(child.kind, ProcessKind::Process);
///     Ok(())
/// }
/// ```
pub fn current_process() -> ProcessInfo {
    match RECORDED.get() {
        Some((me, _)) => me.clone(),
        None => {
            let pid = crate::sys::current_pid() as i32;
            ProcessInfo {
                pid,
                name: "MainProcess".into(),
                kind: ProcessKind::Main,
                cpu: only_cpu_of(pid),
            }
        }
    }
}

/// The process that started this one (Python's `parent_process()`): `None`
/// in the main process. For a pool worker it is the process that built the
/// pool; for a [`Process`](crate::Process), the one that started it. Its
/// `cpu` is the parent's as it was when this child started.
///
/// ```
/// use corepool::Process;
///
/// fn main() -> corepool::Result<()> {
///     assert_eq!(corepool::parent_process(), None);
///     let p = Process::start(|_: ()| corepool::parent_process(), ())?;
///     let parent = p.join()?.expect("a child has a parent");
///     assert_eq!(parent.pid, std::process::id() as i32);
///     assert_eq!(parent.name, "MainProcess");
///     Ok(())
/// }
/// ```
pub fn parent_process() -> Option<ProcessInfo> {
    RECORDED.get().and_then(|(_, parent)| parent.clone())
}

/// Records this child's identity: `kind` and `name` (`None`: the default
/// for its kind), its parent's pid and the parent's
/// [description](describe_current), if it sent one. The first call wins.
pub(crate) fn record_child(
    kind: ProcessKind,
    name: Option<String>,
    parent_pid: i32,
    parent: Option<&str>,
) {
    let pid = crate::sys::current_pid() as i32;
    let name = name.unwrap_or_else(|| match kind {
        ProcessKind::PoolWorker { index } => format!("PoolWorker-{index}"),
        ProcessKind::Main => "MainProcess".into(),
        ProcessKind::Process => format!("Process-{pid}"),
    });
    let me = ProcessInfo {
        pid,
        name,
        kind,
        // The calling thread is the main thread: entry runs before `main`.
        cpu: only_cpu_of(0),
    };
    let parent = parent
        .and_then(parse_description)
        .map(|(kind, cpu, name)| ProcessInfo {
            pid: parent_pid,
            name,
            kind,
            cpu,
        });
    let _ = RECORDED.set((me, parent));
}

/// This process, as a child is told about its parent:
/// `<kind>,<cpu>,<name>`, where kind is `main`, `worker<index>` or
/// `process` and cpu a number or `-`. The name comes last, so it may hold
/// anything but NUL (environment values cannot), which becomes U+FFFD.
pub(crate) fn describe_current() -> String {
    let me = current_process();
    let kind = match me.kind {
        ProcessKind::Main => "main".to_string(),
        ProcessKind::PoolWorker { index } => format!("worker{index}"),
        ProcessKind::Process => "process".to_string(),
    };
    let cpu = me.cpu.map_or_else(|| "-".to_string(), |c| c.to_string());
    format!("{kind},{cpu},{}", me.name.replace('\0', "\u{FFFD}"))
}

/// Reads a [`describe_current`] string back; `None` if it is not one.
pub(crate) fn parse_description(s: &str) -> Option<(ProcessKind, Option<usize>, String)> {
    let mut parts = s.splitn(3, ',');
    let kind = match parts.next()? {
        "main" => ProcessKind::Main,
        "process" => ProcessKind::Process,
        worker => ProcessKind::PoolWorker {
            index: worker.strip_prefix("worker")?.parse().ok()?,
        },
    };
    let cpu = match parts.next()? {
        "-" => None,
        cpu => Some(cpu.parse().ok()?),
    };
    Some((kind, cpu, parts.next()?.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip() {
        let (kind, cpu, name) = parse_description(&describe_current()).unwrap();
        assert_eq!((kind, name.as_str()), (ProcessKind::Main, "MainProcess"));
        assert_eq!(cpu, current_process().cpu);
        assert_eq!(
            parse_description("worker3,7,a,b:c"),
            Some((
                ProcessKind::PoolWorker { index: 3 },
                Some(7),
                "a,b:c".into()
            ))
        );
        assert_eq!(
            parse_description("process,-,"),
            Some((ProcessKind::Process, None, String::new()))
        );
        for bad in ["1", "main", "main,x,n", "workerx,-,n", "thread,-,n"] {
            assert_eq!(parse_description(bad), None, "{bad}");
        }
    }
}
