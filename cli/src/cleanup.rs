//! What must not outlive the command, even when SIGINT (Ctrl-C), SIGTERM or
//! SIGHUP ends it: temporary files and directories (the `--plot` temporary
//! file, the built-in Python script's directory) and child processes with
//! everything they started (the Python baseline and its workers, see
//! [`Child`]). The fatal signal's default action runs no destructor, so a
//! signal thread kills every registered child's tree and reaps the child,
//! removes every registered path, then ends the process with that same
//! signal (the shell still sees 130 for Ctrl-C).
//!
//! One lock guards both lists. The signal thread takes it and never gives it
//! back: a child cannot be started, reaped or killed by the main thread
//! while (or after) the signal thread ends it, and [`settle`] makes the
//! command's normal exit wait for a cleanup under way instead of cutting it
//! short.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a fatal signal cleans up, each entry by registration number.
struct Registry {
    paths: Vec<(u64, PathBuf)>,
    /// Children's pids: while listed, the child is not reaped, so the pid is
    /// ours (see [`Child`]).
    children: Vec<(u64, u32)>,
}

static REGISTERED: Mutex<Registry> = Mutex::new(Registry {
    paths: Vec::new(),
    children: Vec::new(),
});
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The signals that end the command after the cleanup.
const FATAL: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How long the signal thread waits for a killed child to exit before it
/// leaves it to init (one stuck in an uninterruptible sleep dies when it
/// leaves it; the command must still end).
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Starts the signal thread. Without it (the handlers cannot be installed)
/// the command runs as before, only without the cleanup.
pub(crate) fn install() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new(FATAL) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("corepool-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Held until the process ends: see the module's comment.
                let mut registry = lock();
                end_children(&mut registry);
                remove_paths(&mut registry);
                // The default action now: the process ends by `signal`. A
                // failure to re-raise still must not leave us running.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
}

/// Makes the command's own exit wait for a signal's cleanup under way (it
/// then ends the process itself); call it when the command is done. The
/// returned guard keeps a later signal's cleanup waiting until `main`
/// returns, by which time everything registered has been dropped.
pub(crate) fn settle() -> impl Drop {
    lock()
}

/// Kills every registered child with all it started, then reaps it (within
/// [`REAP_WAIT`] in all; a child that outlasts it is left to init, dead or
/// dying, rather than the command hanging).
fn end_children(registry: &mut Registry) {
    let children = std::mem::take(&mut registry.children);
    for &(_, pid) in &children {
        crate::proctree::kill_tree(pid);
    }
    let deadline = Instant::now() + REAP_WAIT;
    for (_, pid) in children {
        // A poll: SIGKILL ends a process as soon as it next runs.
        while !crate::sys::try_reap(pid).unwrap_or(true) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Removes every registered path (files, or directories with what is in
/// them). Whatever is gone already is fine.
fn remove_paths(registry: &mut Registry) {
    for (_, path) in std::mem::take(&mut registry.paths) {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&path);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding it left valid lists: keep going.
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path removed if a fatal signal ends the command while this lives;
/// dropping it only forgets the path (its owner removes or keeps it).
#[derive(Debug)]
pub(crate) struct Registered(u64);

impl Registered {
    pub(crate) fn new(path: PathBuf) -> Self {
        let id = next_id();
        lock().paths.push((id, path));
        Registered(id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock().paths.retain(|(id, _)| *id != self.0);
    }
}

/// A child process that ends, with every process it started, if a fatal
/// signal ends the command, or if this is dropped before it was waited for
/// (an error or a panic on the way out): the command never leaves it, or
/// its own children (Python's pool workers), running behind it.
///
/// The child is registered from the moment it is spawned until it is
/// reaped, and reaped only under the lock after leaving the list, so the
/// signal thread only ever signals a pid that is still this child's.
#[derive(Debug)]
pub(crate) struct Child {
    child: std::process::Child,
    id: u64,
    reaped: bool,
}

impl Child {
    /// Spawns `cmd`, registered before the signal thread can look: a signal
    /// that arrives meanwhile waits for the registration, then ends it.
    pub(crate) fn spawn(cmd: &mut std::process::Command) -> std::io::Result<Self> {
        let mut registry = lock();
        let child = cmd.spawn()?;
        let id = next_id();
        registry.children.push((id, child.id()));
        Ok(Child {
            child,
            id,
            reaped: false,
        })
    }

    /// The process as started (to take its pipes).
    pub(crate) fn process(&mut self) -> &mut std::process::Child {
        &mut self.child
    }

    /// Kills the child and everything it started (children first; see
    /// [`crate::proctree`]). Reap it with [`Child::wait`].
    pub(crate) fn kill(&mut self) {
        let _registry = lock();
        if !self.reaped {
            crate::proctree::kill_tree(self.child.id());
        }
    }

    /// Waits for the child to exit and reaps it.
    pub(crate) fn wait(&mut self) -> std::io::Result<ExitStatus> {
        // Exited but not reaped: the pid stays the child's while it leaves
        // the list.
        crate::sys::exited_unreaped(self.child.id(), true)?;
        let _registry = self.forget();
        self.child.wait()
    }

    /// Reaps the child if it has exited: `Ok(None)` while it runs.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if !crate::sys::exited_unreaped(self.child.id(), false)? {
            return Ok(None);
        }
        let _registry = self.forget();
        self.child.try_wait()
    }

    /// Takes the exited child off the list; the caller reaps it while
    /// holding the returned lock.
    fn forget(&mut self) -> std::sync::MutexGuard<'static, Registry> {
        let mut registry = lock();
        registry.children.retain(|(id, _)| *id != self.id);
        self.reaped = true;
        registry
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_paths_are_removed_and_forgotten_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plot.svg.tmp");
        let sub = dir.path().join("script-dir");
        let kept = dir.path().join("kept");
        std::fs::write(&file, "x").unwrap();
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("bench_mp.py"), "x").unwrap();
        std::fs::write(&kept, "x").unwrap();
        let _file = Registered::new(file.clone());
        let _sub = Registered::new(sub.clone());
        drop(Registered::new(kept.clone()));
        remove_paths(&mut lock());
        assert!(!file.exists());
        assert!(!sub.exists());
        assert!(kept.exists(), "a dropped registration is forgotten");
    }
}
