//! [`ProcessBuilder`]: a [`Process`]'s settings (name, daemon flag, CPU,
//! room for the result), and starting one: encode the argument into a new
//! segment, have the process thread start the child, hand back the handle.

use super::introspect;
use super::reaper::{self, Started};
use super::{segment, Process, PROCESS_ENV};
use crate::error::{Error, Result};
use crate::wire::task;
use crate::wire::Wire;
use std::marker::PhantomData;

/// The longest name a [`Process`] may have, in bytes: its name and its
/// parent's description (kind, CPU and name; a NUL in a name takes three
/// bytes there) each get [`introspect::IDENTITY_ROOM`] bytes of the header
/// page, so a name this long arrives whole, also in a grandchild's
/// `parent_process()`.
pub(super) const NAME_MAX: usize = 512;

/// Configures a [`Process`]: `Process::builder().name("x").daemon(true).start(f, arg)`.
///
/// ```
/// fn main() {
///     let p = corepool::Process::builder().name("adder").start(|x: u64| x + 1, 41).unwrap();
///     assert_eq!(p.name(), "adder");
///     assert_eq!(p.join().unwrap(), 42);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    cpu: Option<usize>,
    max_result_bytes: u32,
}

impl Default for ProcessBuilder {
    fn default() -> Self {
        Self {
            name: None,
            daemon: false,
            cpu: None,
            max_result_bytes: 64 * 1024,
        }
    }
}

impl ProcessBuilder {
    /// A name, for messages and `ps`-style listings (Python's `name`):
    /// [`Process::name`] in the parent, [`crate::current_process`]`().name`
    /// in the child, whole in both. Default `Process-<pid>`.
    ///
    /// At most 512 bytes: the child gets it (and its own children its
    /// description) in its segment's header page, so [`start`](Self::start)
    /// refuses a longer one with [`Error::InvalidConfig`] rather than cut it.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let p = corepool::Process::builder().name("doubler").start(|x: u32| x * 2, 4)?;
    ///     assert_eq!(p.name(), "doubler");
    ///     assert_eq!(p.join()?, 8);
    ///
    ///     let long = corepool::Process::builder().name("x".repeat(513)).start(|x: u32| x, 4);
    ///     assert!(matches!(long, Err(corepool::Error::InvalidConfig { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Python's `daemon`: a daemon process is killed when its handle is
    /// dropped (it ends with the scope that owns it); a non-daemon one keeps
    /// running, and is still reaped when it ends. Either way, none outlives
    /// the parent.
    ///
    /// ```
    /// use corepool::Process;
    ///
    /// fn spin(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let p = Process::builder().daemon(true).start(spin, 0)?;
    ///     assert!(p.is_daemon() && p.is_alive());
    ///     drop(p); // SIGKILLed here, then reaped by the process thread
    ///     Ok(())
    /// }
    /// ```
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Pin the process to this CPU before it starts.
    ///
    /// ```
    /// use corepool::{info, Error, Process};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let cpu = info::allowed_cpus()?[0];
    ///     let p = Process::builder().cpu(cpu).start(|_: ()| info::allowed_cpus().unwrap(), ())?;
    ///     assert_eq!(p.join()?, vec![cpu]);
    ///     // A CPU outside the allowed set is refused before anything starts.
    ///     let refused = Process::builder().cpu(usize::MAX).start(|x: u8| x, 0);
    ///     assert!(matches!(refused, Err(Error::CpuNotAllowed { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn cpu(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Room for the encoded result in the process's own segment (default
    /// 64 KiB). A larger result travels in a one-off shared segment (a
    /// spill) that the child holds until the parent reads it in
    /// [`Process::join`] (or [`Process::join_timeout`]), so this is a speed
    /// knob, never a limit.
    ///
    /// ```
    /// use corepool::Process;
    ///
    /// fn zeros(n: u32) -> Vec<u8> {
    ///     vec![0; n as usize]
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let small = Process::builder().max_result_bytes(64).start(zeros, 10)?;
    ///     assert_eq!(small.join()?.len(), 10);
    ///     let big = Process::builder().max_result_bytes(64).start(zeros, 1 << 20)?;
    ///     assert_eq!(big.join()?.len(), 1 << 20); // spilled
    ///     Ok(())
    /// }
    /// ```
    pub fn max_result_bytes(mut self, bytes: u32) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    /// Starts `f(arg)` in a new process.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let p = corepool::Process::builder().start(|(a, b): (u64, u64)| a * b, (6, 7))?;
    ///     assert_eq!(p.join()?, 42);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a [name](Self::name) longer than 512
    /// bytes; [`Error::CpuNotAllowed`]; [`Error::SharedMemory`];
    /// [`Error::Spawn`]; [`Error::Encode`] for an argument that cannot be
    /// encoded (nothing is started in each case). Nothing needs calling
    /// first ([`crate::init`] does nothing); [`Error::NotInitialized`]
    /// comes only from a process that corepool started as a child but whose
    /// start-up hook did not run, which a normal build never produces (see
    /// that error).
    pub fn start<F, A, R>(self, f: F, arg: A) -> Result<Process<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        crate::entry::keep_linked(); // children are recognised before main
        if crate::pool::worker::is_uninitialised_worker() || std::env::var_os(PROCESS_ENV).is_some()
        {
            return Err(Error::NotInitialized);
        }
        if let Some(name) = self.name.as_deref().filter(|n| n.len() > NAME_MAX) {
            return Err(Error::InvalidConfig {
                what: format!(
                    "a Process name of {} bytes: give at most {NAME_MAX} bytes (the child gets it whole in its segment's header page)",
                    name.len()
                ),
            });
        }
        crate::child::image::check_reexecutable()?;
        if let Some(cpu) = self.cpu {
            let allowed = crate::info::allowed_cpus()?;
            if !allowed.contains(&cpu) {
                return Err(Error::CpuNotAllowed { cpu, allowed });
            }
        }
        crate::shm::handle::sweep();
        // Encoded before anything starts: a value that cannot be encoded
        // starts nothing.
        let (payload, carried) = crate::wire::encode_carried(&arg)?;
        let crate::wire::Carried {
            keep,
            handovers,
            transits,
        } = carried;
        // Pipe ends passed in go back to us if no child is started with them.
        let handovers = crate::wire::InFlight::new(handovers);
        // Room for at least a spill's handle: a larger result spills.
        let room = self
            .max_result_bytes
            .max(crate::shm::spill::HANDLE_BYTES as u32);
        let seg = segment::create(
            task::offset_of(task::call_one::<F, A, R>),
            &payload,
            room,
            &introspect::identity_for_child(self.name.as_deref()),
        )?;
        let Started { pid, pidfd, exit } = reaper::spawn(seg.raw_fd(), self.cpu)?;
        // Pipe ends passed in belong to the child from now on, even if it
        // dies before it first touches them; those it still holds when it is
        // reaped are closed on its behalf then.
        let delivered = handovers.delivered_to(pid);
        if !delivered.is_empty() {
            exit.on_exit(move || {
                for handover in delivered {
                    handover.holder_exited(pid);
                }
            });
        }
        let name = self.name.unwrap_or_else(|| format!("Process-{pid}"));
        // A child inherits a one-CPU affinity when it is not pinned itself.
        let cpu = self.cpu.or(crate::identity::current_process().cpu);
        introspect::register(pid, &name, cpu, exit.clone());
        Ok(Process {
            name,
            pid,
            daemon: self.daemon,
            exit,
            pidfd,
            seg,
            taken: std::sync::Mutex::new(None),
            transits,
            _keep: keep,
            discard: super::discard_result::<R>,
            _result: PhantomData,
        })
    }
}
