//! Starting this binary again as a child: the one way corepool creates
//! worker and `Process` children (never a bare fork of a threaded parent).
//!
//! The child is made with `posix_spawn` (`clone(CLONE_VM | CLONE_VFORK)`
//! inside the C library), not `fork`: a fork copies the parent's page
//! tables and write-protects its memory, which costs in proportion to the
//! parent's size (20 ms for a replacement worker in a parent of 1 GiB, on
//! the project's VM) and interrupts the parent's other threads with TLB
//! shootdowns. What used to run between fork and exec runs elsewhere: the
//! process group and the descriptor to keep through `posix_spawn`'s own
//! attributes; the pinning and the parent-death signal in the child itself,
//! first thing on its way in ([`crate::entry`]), which then checks that its
//! parent is still the one that started it. (Pinning the spawning thread
//! for the child to inherit would be simpler, but it puts the spawning
//! thread on the child's CPU, where it waits for the child's whole start-up
//! before it can start the next one.)

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

/// The environment variable that carries a child's CPUs (`0,3,5`) to its
/// entry, which pins itself to them before any other code of corepool's or
/// the program's runs, and removes the variable.
pub(crate) const CPUS_ENV: &str = "COREPOOL_CPUS";

/// Checks that `cpus` holds a CPU the calling thread may run on (the
/// kernel's EINVAL otherwise, as pinning would fail), and writes the set as
/// [`CPUS_ENV`] wants it.
fn cpus_for_child(cpus: &sys::CpuMask) -> std::io::Result<String> {
    let allowed = sys::affinity_of(0)?;
    let wanted = cpus.cpus();
    if !wanted.iter().any(|cpu| allowed.contains(cpu)) {
        return Err(std::io::Error::from_raw_os_error(sys::EINVAL));
    }
    Ok(wanted
        .iter()
        .map(|cpu| cpu.to_string())
        .collect::<Vec<_>>()
        .join(","))
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
    /// exec'd: in a process group of its own if asked, with `keep_fd`
    /// inherited and stdin on `/dev/null`. On its way in, before any code of
    /// corepool's or the program's, the child pins itself to `cpus` (given
    /// in [`CPUS_ENV`]; a set with no CPU this thread may use fails here,
    /// with EINVAL as pinning would) and arms its parent-death signal, which
    /// fires when the *calling thread* exits: call this from a thread that
    /// lives as long as the child should.
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
            .filter(|(key, _)| {
                key.as_bytes() != env.0.as_bytes() && key.as_bytes() != CPUS_ENV.as_bytes()
            })
            .filter_map(|(key, value)| env_entry(&key, &value))
            .collect();
        envp.extend(env_entry(OsStr::new(env.0), OsStr::new(&env.1)));
        if let Some(cpus) = &cpus {
            let list = cpus_for_child(cpus)?;
            envp.extend(env_entry(OsStr::new(CPUS_ENV), OsStr::new(&list)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot read the affinity")]
    fn a_child_is_told_its_cpus_only_when_one_is_usable() {
        let allowed = sys::affinity_of(0).unwrap();
        let first = allowed[0];
        assert_eq!(
            cpus_for_child(&sys::CpuMask::of(&[first])).unwrap(),
            first.to_string()
        );
        // A set of several is written ascending, comma-separated.
        if let [a, b, ..] = allowed[..] {
            assert_eq!(
                cpus_for_child(&sys::CpuMask::of(&[b, a])).unwrap(),
                format!("{a},{b}")
            );
        }
        // None of its CPUs usable: EINVAL, as pinning would answer (and as
        // the pool turns into `Error::PinFailed`).
        let outside = (0..1024).find(|cpu| !allowed.contains(cpu)).unwrap();
        let err = cpus_for_child(&sys::CpuMask::of(&[outside])).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(sys::EINVAL));
    }

    #[test]
    fn environment_entries_are_key_equals_value() {
        let entry = env_entry(OsStr::new("A"), OsStr::new("b=c")).unwrap();
        assert_eq!(entry.as_bytes(), b"A=b=c");
    }
}
