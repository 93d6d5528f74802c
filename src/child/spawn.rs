//! Starting this binary again as a child: the one way corepool creates
//! worker and `Process` children (never a bare fork of a threaded parent).

use crate::error::ExitCause;
use crate::sys;
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};

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

impl Reexec {
    /// Re-executes `/proc/self/exe`. Between fork and exec the child only
    /// makes async-signal-safe system calls: pin, arm the parent-death
    /// signal (it fires when the *calling thread* exits: call this from a
    /// thread that lives as long as the child should), optionally start a
    /// process group, and let `keep_fd` survive exec.
    pub(crate) fn spawn(self) -> std::io::Result<Child> {
        let Reexec {
            env,
            keep_fd,
            cpus,
            own_group,
        } = self;
        let mut command = Command::new("/proc/self/exe");
        command.env(env.0, env.1).stdin(Stdio::null());
        if let Some(arg0) = std::env::args_os().next() {
            command.arg0(arg0);
        }
        // SAFETY: the closure runs in the forked child before exec and only
        // makes raw system calls (sched_setaffinity, prctl, setpgid, fcntl),
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
                sys::clear_cloexec(keep_fd)?;
                Ok(())
            });
        }
        command.spawn()
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
