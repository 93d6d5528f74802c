//! Starting this binary again as a child: how corepool creates `Process`
//! children, the fork server itself, and workers when the fork server
//! (`child::forkserver`, the default start method) does not serve them
//! (never a bare fork of a threaded parent).
//!
//! The child is made with `posix_spawn` (`clone(CLONE_VM | CLONE_VFORK)`
//! inside the C library), not `fork` (except with C libraries that cannot
//! pass a descriptor through `posix_spawn`: [`fork_and_exec`]): a fork copies the parent's page
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

use crate::child::forkserver::{Refusal, StartMethod};
use crate::error::ExitCause;
use crate::sys;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;

/// How to start the child.
#[derive(Debug)]
pub(crate) struct Reexec {
    /// The environment variable that tells the child's start-up hook (`entry`) what to be, and
    /// its value.
    pub env: (&'static str, String),
    /// The descriptors the child inherits, each under its own number (they
    /// are close-on-exec in the parent). A token in `env` names them.
    pub keep_fds: Vec<RawFd>,
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

/// Writes `cpus` as [`CPUS_ENV`] wants it; an empty set is the kernel's
/// EINVAL at once (pinning to it would fail). Whether the CPUs are usable is
/// the child's to find out, by pinning: the kernel lets a process widen its
/// affinity within its cpuset, so the spawning thread's own set is no test.
/// A child whose pinning fails says so on stderr and exits with status 101,
/// a failed start like any other.
fn cpus_for_child(cpus: &sys::CpuMask) -> std::io::Result<String> {
    let wanted = cpus.cpus();
    if wanted.is_empty() {
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
    /// exec'd: in a process group of its own if asked, with `keep_fds`
    /// inherited and stdin on `/dev/null`. On its way in, before any code of
    /// corepool's or the program's, the child pins itself to `cpus` (given
    /// in [`CPUS_ENV`]; an empty set fails here, with EINVAL as pinning
    /// would) and arms its parent-death signal, which
    /// fires when the *calling thread* exits: call this from a thread that
    /// lives as long as the child should.
    pub(crate) fn spawn(self) -> std::io::Result<i32> {
        self.spawn_closing(&[])
    }

    /// [`Reexec::spawn`], with `close` (descriptors of ours without
    /// close-on-exec) not inherited by the child.
    pub(crate) fn spawn_closing(self, close: &[RawFd]) -> std::io::Result<i32> {
        let Reexec {
            env,
            keep_fds,
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
        let request = sys::SpawnRequest {
            path: c"/proc/self/exe",
            argv: &[arg0],
            envp: &envp,
            keep_fds: &keep_fds,
            own_group,
            close,
        };
        if sys::spawn_keeps_descriptors() {
            let pid = sys::spawn_reexec(&request)?;
            if let Some(cpus) = &cpus {
                // The child pins itself on its way in, but it may not have
                // got there yet when the caller publishes its pid: pin it
                // from here too, so a pid the pool shows always runs where
                // it says. It cannot have been reaped (only our supervisor
                // reaps), so the pid is still the child's. A failure is
                // harmless: the child's own pin stands (or fails its start).
                let _ = sys::pin_process_to(pid, cpus);
            }
            Ok(pid)
        } else {
            fork_and_exec(&request, cpus)
        }
    }

    /// Starts the child as `method` says: through the fork server
    /// (`child::forkserver`), falling back to [`Reexec::spawn`] whenever the
    /// fork server cannot be used or is still starting, or by re-executing. Either way the child
    /// is ours, set up alike, and its pid returned once it runs.
    pub(crate) fn spawn_using(self, method: StartMethod) -> std::io::Result<i32> {
        if method == StartMethod::ForkServer {
            match crate::child::forkserver::spawn(&self) {
                Ok(pid) => return Ok(pid),
                Err(Refusal::Failed(e)) => return Err(e),
                // Exec'd meanwhile: the zygote's start runs beside it.
                Err(Refusal::Fallback(_) | Refusal::Starting) => {}
            }
        }
        self.spawn()
    }
}

/// The spawn for C libraries whose `posix_spawn` cannot pass `keep_fds` on
/// (glibc before 2.29, musl): `fork` and `exec` through `std`'s `Command`,
/// with the same environment, and between the two only async-signal-safe
/// system calls (pin, parent-death signal, process group, `keep_fds`'
/// close-on-exec flags cleared). Costs a copy of the parent's page tables.
fn fork_and_exec(
    request: &sys::SpawnRequest<'_>,
    cpus: Option<sys::CpuMask>,
) -> std::io::Result<i32> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(OsStr::from_bytes(request.path.to_bytes()));
    command.env_clear().stdin(std::process::Stdio::null());
    for entry in request.envp {
        let entry = entry.as_bytes();
        if let Some(at) = entry.iter().position(|&b| b == b'=') {
            command.env(
                OsStr::from_bytes(&entry[..at]),
                OsStr::from_bytes(&entry[at + 1..]),
            );
        }
    }
    if let Some((arg0, rest)) = request.argv.split_first() {
        command.arg0(OsStr::from_bytes(arg0.as_bytes()));
        command.args(rest.iter().map(|a| OsStr::from_bytes(a.as_bytes())));
    }
    let (keep_fds, own_group) = (request.keep_fds.to_vec(), request.own_group);
    let close = request.close.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes raw system calls (sched_setaffinity, prctl, setpgid, close, fcntl),
    // which are async-signal-safe; it allocates nothing, takes no locks.
    unsafe {
        command.pre_exec(move || {
            if let Some(cpus) = &cpus {
                sys::pin_self_to(cpus)?;
            }
            sys::set_parent_death_signal()?;
            if own_group {
                sys::new_process_group()?;
            }
            for &fd in &close {
                sys::close_number(fd);
            }
            for &fd in &keep_fds {
                sys::clear_cloexec(fd)?;
            }
            Ok(())
        });
    }
    // The child is reaped through its pid (`sys::try_wait`), like one made
    // by `posix_spawn`; dropping `std`'s handle neither kills nor waits.
    let child = command.spawn()?;
    Ok(child.id() as i32)
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
    fn a_child_is_told_its_cpus_and_an_empty_set_is_refused() {
        assert_eq!(cpus_for_child(&sys::CpuMask::of(&[3])).unwrap(), "3");
        // Written ascending, comma-separated.
        assert_eq!(cpus_for_child(&sys::CpuMask::of(&[5, 0])).unwrap(), "0,5");
        // No CPU the mask can hold: EINVAL, as pinning would answer.
        let err = cpus_for_child(&sys::CpuMask::of(&[usize::MAX])).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(sys::EINVAL));
    }

    /// Both ways of starting a child (`posix_spawn`, and fork + exec for C
    /// libraries that need it) give it the same start: the kept descriptor
    /// open (close-on-exec here), stdin on /dev/null, its own process group
    /// when asked, the environment as given.
    #[test]
    #[cfg_attr(miri, ignore = "Miri starts no processes")]
    fn both_spawn_paths_set_the_child_up_alike() {
        use std::os::fd::AsRawFd;
        let (kept, _other) = sys::pipe().unwrap();
        let fd = kept.as_raw_fd();
        sys::set_cloexec(fd).unwrap();
        let script = format!(
            "[ -e /proc/self/fd/{fd} ] || exit 3; \
             [ \"$(readlink /proc/$$/fd/0)\" = /dev/null ] || exit 4; \
             set -- $(cat /proc/$$/stat); [ \"$1\" = \"$5\" ] || exit 5; \
             [ \"$COREPOOL_SPAWN_TEST\" = yes ] || exit 6; exit 7"
        );
        let argv = [
            c"sh".to_owned(),
            c"-c".to_owned(),
            CString::new(script).unwrap(),
        ];
        let envp = [c"COREPOOL_SPAWN_TEST=yes".to_owned()];
        let request = sys::SpawnRequest {
            path: c"/bin/sh",
            argv: &argv,
            envp: &envp,
            keep_fds: &[fd],
            own_group: true,
            close: &[],
        };
        let spawned = if sys::spawn_keeps_descriptors() {
            Some(sys::spawn_reexec(&request).unwrap())
        } else {
            None
        };
        let forked = fork_and_exec(&request, None).unwrap();
        for pid in spawned.into_iter().chain([forked]) {
            let status = sys::wait_exit(pid).unwrap();
            assert_eq!(exit_cause(status), ExitCause::Code(7), "pid {pid}");
        }
    }

    #[test]
    fn environment_entries_are_key_equals_value() {
        let entry = env_entry(OsStr::new("A"), OsStr::new("b=c")).unwrap();
        assert_eq!(entry.as_bytes(), b"A=b=c");
    }
}
