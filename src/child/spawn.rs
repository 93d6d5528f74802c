//! Starting this binary again as a child: the one way corepool creates
//! worker and `Process` children (never a bare fork of a threaded parent).
//!
//! The child is made with `posix_spawn` (`clone(CLONE_VM | CLONE_VFORK)`
//! inside the C library), not `fork`: a fork copies the parent's page
//! tables and write-protects its memory, which costs in proportion to the
//! parent's size (20 ms for a replacement worker in a parent of 1 GiB, on
//! the project's VM) and interrupts the parent's other threads with TLB
//! shootdowns. What used to run between fork and exec runs elsewhere: the
//! pinning on the spawning thread (the child inherits its CPUs), the process
//! group and the descriptor to keep through `posix_spawn`'s own attributes,
//! and the parent-death signal in the child itself, first thing on its way
//! in ([`crate::entry`]), which then checks that its parent is still the
//! one that started it.

use crate::error::ExitCause;
use crate::sys;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;

/// How to start the child.
#[derive(Debug)]
pub(crate) struct Reexec {
    /// The environment variable that tells `corepool::init` what to be, and
    /// its value.
    pub env: (&'static str, String),
    /// A descriptor the child inherits (it is close-on-exec in the parent).
    pub keep_fd: RawFd,
    /// Pin the child to these CPUs before it runs any code (`None`: leave
    /// it where the parent may run).
    pub cpus: Option<sys::CpuMask>,
    /// Make the child a process-group leader, so that what it starts can be
    /// killed with it.
    pub own_group: bool,
}

/// The calling thread pinned for a spawn; dropping it restores the CPUs
/// the thread had before.
struct PinnedForSpawn {
    before: sys::CpuMask,
}

impl PinnedForSpawn {
    fn pin(cpus: &sys::CpuMask) -> std::io::Result<Self> {
        let before = sys::CpuMask::of(&sys::affinity_of(0)?);
        sys::pin_self_to(cpus)?;
        Ok(Self { before })
    }
}

impl Drop for PinnedForSpawn {
    fn drop(&mut self) {
        // The set the thread had a moment ago: it cannot have become
        // invalid, and if it did the thread merely stays on the child's CPUs.
        let _ = sys::pin_self_to(&self.before);
    }
}

/// `KEY=VALUE`, as the C library wants an environment entry.
fn env_entry(key: &OsStr, value: &OsStr) -> Option<CString> {
    let mut entry = OsString::with_capacity(key.len() + value.len() + 1);
    entry.push(key);
    entry.push("=");
    entry.push(value);
    // An entry with a NUL byte cannot be passed on (std's `Command` fails
    // the spawn for it; such a variable cannot come from a real
    // environment, only from a `set_var` with a NUL in it).
    CString::new(entry.into_vec()).ok()
}

impl Reexec {
    /// Re-executes `/proc/self/exe` and returns the child's pid once it has
    /// exec'd. The child is pinned from its first instruction (the calling
    /// thread is pinned to its CPUs for the spawn, then restored), in a
    /// process group of its own if asked, with `keep_fd` inherited and
    /// stdin on `/dev/null`. It arms its parent-death signal itself on the
    /// way in, and that signal fires when the *calling thread* exits: call
    /// this from a thread that lives as long as the child should.
    pub(crate) fn spawn(self) -> std::io::Result<i32> {
        let Reexec {
            env,
            keep_fd,
            cpus,
            own_group,
        } = self;
        let arg0 = std::env::args_os()
            .next()
            .and_then(|a| CString::new(a.into_vec()).ok())
            .unwrap_or_else(|| c"corepool-child".to_owned());
        let mut envp: Vec<CString> = std::env::vars_os()
            .filter(|(key, _)| key.as_bytes() != env.0.as_bytes())
            .filter_map(|(key, value)| env_entry(&key, &value))
            .collect();
        envp.extend(env_entry(OsStr::new(env.0), OsStr::new(&env.1)));
        let _pinned = cpus.as_ref().map(PinnedForSpawn::pin).transpose()?;
        sys::spawn_reexec(&sys::SpawnRequest {
            path: c"/proc/self/exe",
            argv: &[arg0],
            envp: &envp,
            keep_fd,
            own_group,
        })
    }
}

/// How a reaped child ended.
pub(crate) fn exit_cause(status: std::process::ExitStatus) -> ExitCause {
    match (status.signal(), status.code()) {
        (Some(sig), _) => ExitCause::Signal(sig),
        (None, Some(code)) => ExitCause::Code(code),
        (None, None) => ExitCause::Code(-1),
    }
}
