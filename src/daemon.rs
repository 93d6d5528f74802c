//! Unix daemons, as the seed describes them: detached from the terminal and
//! the session, adopted by init, running in the background until told to stop.
//!
//! [`Daemon::start`] does the classic steps: fork (the parent returns to the
//! shell), `setsid` (a new session, no controlling terminal), fork again (the
//! daemon can never reacquire one), `chdir`, `umask`, standard streams to
//! `/dev/null` or a log file, and a pid file held with an exclusive lock so
//! that a second instance refuses to start.
//!
//! The pid file is treated as something others may have tampered with: it
//! is opened without following a symbolic link, must be a regular file owned
//! by this user, is locked with a write lock (which a process that can only
//! read the file cannot take), and records the daemon's start time beside
//! its pid, so that [`stop`] never signals a process that merely reused the
//! pid. Unlike a pool worker or a
//! [`crate::Process`], a daemon is meant to outlive its parent: it is the one
//! orphan made on purpose.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Configures and starts a daemon.
///
/// ```no_run
/// fn main() -> Result<(), corepool::Error> {
///     let _guard = corepool::Daemon::new()
///         .pid_file("/tmp/ticker.pid")
///         .log_file("/tmp/ticker.log")
///         .start()?; // only the daemon returns from here
///     loop {
///         println!("tick");
///         std::thread::sleep(std::time::Duration::from_secs(1));
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Daemon {
    pid_file: Option<PathBuf>,
    log_file: Option<PathBuf>,
    working_dir: PathBuf,
    umask: u32,
}

impl Default for Daemon {
    fn default() -> Self {
        Self {
            pid_file: None,
            log_file: None,
            working_dir: PathBuf::from("/"),
            umask: 0o022,
        }
    }
}

/// Held by the running daemon: keeps the pid file locked, and removes it when
/// dropped (a clean stop).
///
/// ```
/// // In the daemon, `start` returns the guard; keep it for the daemon's life.
/// // (A runnable version is `examples/daemon.rs`.)
/// fn run() -> corepool::Result<()> {
///     let _guard = corepool::Daemon::new().pid_file("/tmp/my.pid").start()?;
///     // ... the daemon's work ...
///     Ok(()) // the guard drops: the pid file is removed, the lock released
/// }
/// # let _ = run;
/// ```
#[derive(Debug)]
pub struct DaemonGuard {
    pid_file: Option<(PathBuf, File)>,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some((path, _file)) = self.pid_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn io_err(op: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::os(op, e)
}

impl Daemon {
    /// The defaults: no pid file, output to `/dev/null`, working directory `/`,
    /// umask `022`.
    ///
    /// ```
    /// let d = corepool::Daemon::new();
    /// assert!(format!("{d:?}").contains("working_dir: \"/\""));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Write the daemon's pid here and hold an exclusive lock on it for the
    /// daemon's life; a second instance with the same pid file refuses to
    /// start with [`Error::AlreadyRunning`]. Relative paths are resolved
    /// before the daemon changes directory.
    ///
    /// ```
    /// let d = corepool::Daemon::new().pid_file("/run/user/ticker.pid");
    /// assert!(format!("{d:?}").contains("ticker.pid"));
    /// ```
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Send standard output and error here (appending) instead of `/dev/null`.
    ///
    /// ```
    /// let d = corepool::Daemon::new().log_file("ticker.log");
    /// assert!(format!("{d:?}").contains("ticker.log"));
    /// ```
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// The daemon's working directory (default `/`, so that it keeps no
    /// mount busy).
    ///
    /// ```
    /// let d = corepool::Daemon::new().working_dir("/var/lib/ticker");
    /// assert!(format!("{d:?}").contains("/var/lib/ticker"));
    /// ```
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = dir.into();
        self
    }

    /// The daemon's file-creation mask (default `0o022`).
    ///
    /// ```
    /// let d = corepool::Daemon::new().umask(0o077); // files readable by the owner only
    /// assert!(format!("{d:?}").contains(&0o077.to_string()));
    /// ```
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = mask;
        self
    }

    /// Turns this process into a daemon. Returns **only in the daemon**; the
    /// calling process exits with status 0 once the daemon is up (or returns
    /// the error if it could not start).
    ///
    /// Call it first in `main`, before any thread exists: forking a
    /// multithreaded process is unsound. Building a pool or starting a
    /// [`Process`](crate::Process) starts threads (the process thread that
    /// reaps children lives on after the child is joined), so daemonize
    /// before either; nothing needs calling before it.
    ///
    /// ```no_run
    /// fn main() -> corepool::Result<()> {
    ///     let guard = corepool::Daemon::new()
    ///         .pid_file("/tmp/ticker.pid")
    ///         .log_file("/tmp/ticker.log")
    ///         .start()?; // the shell's process exits here; the daemon goes on
    ///     println!("daemon {} up", std::process::id()); // into the log file
    ///     drop(guard); // removes the pid file
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] if the pid file is locked by a live daemon;
    /// [`Error::InvalidConfig`] if threads are running (a pool was built or
    /// a `Process` started before); [`Error::Os`] for
    /// files and system calls.
    pub fn start(self) -> Result<DaemonGuard> {
        if thread_count() != Some(1) {
            return Err(Error::InvalidConfig {
                what: "daemonize before starting any thread, building a pool or starting a Process (each of these starts threads, and a Process's reaper thread outlives the child): call Daemon::start first in main".into(),
            });
        }
        let abs = |p: &Path| -> Result<PathBuf> {
            if p.is_absolute() {
                Ok(p.to_path_buf())
            } else {
                Ok(std::env::current_dir().map_err(io_err("getcwd"))?.join(p))
            }
        };
        // Lock the pid file here, in the caller, so that a second instance is
        // told at once. The lock belongs to the open file, which the daemon
        // inherits across both forks.
        let mut created_pid_file = None;
        let pid_file = match &self.pid_file {
            Some(p) => {
                let path = abs(p)?;
                let existed = std::fs::symlink_metadata(&path).is_ok();
                let file = lock_pid_file(&path)?;
                if !existed {
                    created_pid_file = Some(path.clone());
                }
                Some((path, file))
            }
            None => None,
        };
        // A start that fails leaves no pid file it created behind (a user
        // trial found an empty one after a log file that could not be
        // opened); one that was there before stays as it was.
        let remove_created = || {
            if let Some(path) = &created_pid_file {
                let _ = std::fs::remove_file(path);
            }
        };
        let before_fork = (|| -> Result<_> {
            let log = match &self.log_file {
                Some(p) => Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(abs(p)?)
                        .map_err(io_err("opening the log file"))?,
                ),
                None => None,
            };
            Ok((log, pipe()?))
        })();
        let (log, (mut ready_rx, ready_tx)) = before_fork.inspect_err(|_| remove_created())?;
        // First fork: the caller waits for word from the daemon, then exits.
        // SAFETY: this process has exactly one thread: `thread_count` said so
        // above, and since then this thread has started none (opening files
        // and a pipe starts no thread), and only a thread of ours could have.
        match unsafe { crate::sys::fork() }
            .map_err(io_err("fork"))
            .inspect_err(|_| remove_created())?
        {
            Some(child) => {
                drop(ready_tx);
                let mut word = String::new();
                let _ = ready_rx.read_to_string(&mut word);
                crate::sys::wait_for(child);
                if word.trim() == "ok" {
                    std::process::exit(0);
                }
                remove_created();
                return Err(Error::Os {
                    op: "starting the daemon",
                    source: std::io::Error::other(word),
                });
            }
            None => drop(ready_rx),
        }
        let mut ready_tx = ready_tx;
        let result = (|| -> Result<()> {
            crate::sys::setsid().map_err(io_err("setsid"))?;
            // Second fork: the session leader exits, so the daemon can never
            // acquire a controlling terminal again.
            // SAFETY: this is the child of the first fork, which copied only
            // the forking thread (the process's only one, see above), and it
            // has started no thread since: `setsid` starts none.
            if unsafe { crate::sys::fork() }
                .map_err(io_err("fork"))?
                .is_some()
            {
                crate::sys::exit_now(0);
            }
            std::env::set_current_dir(&self.working_dir).map_err(io_err("chdir"))?;
            crate::sys::set_umask(self.umask);
            redirect_stdio(log.as_ref())?;
            if let Some((_, file)) = &pid_file {
                write_pid(file)?;
            }
            Ok(())
        })();
        let _ = write!(
            ready_tx,
            "{}",
            match &result {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        );
        drop(ready_tx);
        match result {
            Ok(()) => Ok(DaemonGuard { pid_file }),
            Err(_) => crate::sys::exit_now(1),
        }
    }
}

/// Stops the daemon whose pid file is `path`: SIGTERM, then waits up to
/// `timeout` for it to release the pid file's lock. Returns its pid.
///
/// ```
/// use std::time::Duration;
///
/// // No daemon holds this pid file: a clear error, nothing signalled.
/// let path = std::env::temp_dir().join(format!("corepool-doc-{}.pid", std::process::id()));
/// std::fs::write(&path, "12345\n").unwrap();
/// let err = corepool::daemon::stop(&path, Duration::from_secs(5)).unwrap_err();
/// assert!(err.to_string().contains("no daemon holds"), "{err}");
/// assert!(err.to_string().contains("stale"), "{err}"); // and what to do: remove it
/// assert!(!err.to_string().contains("message above"), "{err}");
/// std::fs::remove_file(&path).unwrap();
/// ```
///
/// # Errors
///
/// [`Error::Os`] if the file cannot be read or names no running daemon
/// (a stale pid file: its message says so; remove the file);
/// [`Error::Timeout`] if it is still running after `timeout`.
pub fn stop(path: impl AsRef<Path>, timeout: Duration) -> Result<i32> {
    let path = path.as_ref();
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
        .map_err(|e| pid_file_error(path, e))?;
    if !crate::sys::ofd_lock_is_held(file.as_fd())
        .map_err(io_err("checking the pid file's lock"))?
    {
        return Err(Error::Os {
            op: "stopping the daemon",
            source: std::io::Error::other(format!(
                "no daemon holds {}: the pid file is stale (its daemon is gone without removing it, e.g. killed by a signal); nothing was signalled: remove the file (a new daemon may also start over it)",
                path.display()
            )),
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(io_err("reading the pid file"))?;
    let Some(PidRecord { pid, started }) = PidRecord::parse(&text) else {
        return Err(Error::Os {
            op: "stopping the daemon",
            source: std::io::Error::other(format!(
                "{} does not hold a pid and a start time (\"<pid> <start time>\"); stop the daemon by hand",
                path.display()
            )),
        });
    };
    // A pidfd names one process for good; checking its start time after
    // opening it proves it is the daemon that wrote the file, not a later
    // process that reused the pid. Only then is it signalled.
    let pidfd = crate::sys::pidfd_open(pid).map_err(io_err("pidfd_open"))?;
    let now =
        crate::sys::process_start_time(pid).map_err(io_err("reading the process's start time"))?;
    if now != started {
        return Err(Error::Os {
            op: "stopping the daemon",
            source: std::io::Error::other(format!(
                "pid {pid} in {} is not the daemon that wrote it (that daemon is gone and the pid was reused): nothing was signalled",
                path.display()
            )),
        });
    }
    crate::sys::pidfd_send_signal(pidfd.as_fd(), crate::sys::Signal::TERM);
    // `None`: a timeout too long to add to now (`Duration::MAX`) waits forever.
    let deadline = crate::shm::park::deadline_after(timeout);
    let mut ready = Vec::new();
    while crate::sys::ofd_lock_is_held(file.as_fd())
        .map_err(io_err("checking the pid file's lock"))?
    {
        let left = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout);
                }
                Some(left)
            }
            None => None,
        };
        // Wait for the exit itself, not a polling tick; the lock goes with it.
        crate::sys::poll_readable(&[pidfd.as_fd()], &mut ready, left).map_err(io_err("poll"))?;
    }
    Ok(pid)
}

/// What a pid file says: the daemon's pid and when it started (clock ticks
/// since boot, as `/proc/<pid>/stat` has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PidRecord {
    pid: i32,
    started: u64,
}

impl PidRecord {
    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok().filter(|&p: &i32| p > 0)?;
        let started = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Self { pid, started })
    }
}

/// Says what is wrong with a pid file that could not be opened.
fn pid_file_error(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(crate::sys::ELOOP) {
        return Error::InvalidConfig {
            what: format!(
                "the pid file {} is a symbolic link, which corepool never follows (it could point at any file): remove it, or use a pid file in a directory only you can write",
                path.display()
            ),
        };
    }
    Error::os("opening the pid file", e)
}

fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

fn lock_pid_file(path: &Path) -> Result<File> {
    let file = open_pid_file(path)?;
    if !crate::sys::ofd_lock_exclusive(file.as_fd()).map_err(io_err("locking the pid file"))? {
        let mut text = String::new();
        let _ = (&file).read_to_string(&mut text);
        return Err(Error::AlreadyRunning {
            pid_file: path.display().to_string(),
            pid: PidRecord::parse(&text).map(|r| r.pid),
        });
    }
    Ok(file)
}

/// Opens (or creates, mode 0644) the pid file, never through a symbolic
/// link, and only if it is a regular file of this user's: a file someone
/// else owns could be held or rewritten by them.
fn open_pid_file(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .mode(0o644)
        .custom_flags(crate::sys::O_NOFOLLOW);
    let file = match options.clone().create_new(true).open(path) {
        Ok(file) => file,
        // Exists (a symbolic link too, dangling or not): open what is there,
        // still without following a link.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            options.open(path).map_err(|e| pid_file_error(path, e))?
        }
        Err(e) => return Err(pid_file_error(path, e)),
    };
    let meta = file.metadata().map_err(io_err("checking the pid file"))?;
    if !meta.file_type().is_file() {
        return Err(Error::InvalidConfig {
            what: format!(
                "the pid file {} is not a regular file: choose another path",
                path.display()
            ),
        });
    }
    let me = crate::sys::effective_uid();
    if meta.uid() != me {
        return Err(Error::InvalidConfig {
            what: format!(
                "the pid file {} belongs to uid {}, not to you (uid {me}), so its owner could hold or rewrite it: remove it, or use a pid file in a directory only you can write",
                path.display(),
                meta.uid()
            ),
        });
    }
    Ok(file)
}

/// Writes "<pid> <start time>" of this process (the daemon).
fn write_pid(file: &File) -> Result<()> {
    let pid = std::process::id() as i32;
    let started =
        crate::sys::process_start_time(pid).map_err(io_err("reading the daemon's start time"))?;
    let mut f = file;
    f.set_len(0).map_err(io_err("truncating the pid file"))?;
    f.rewind().map_err(io_err("writing the pid file"))?;
    writeln!(f, "{pid} {started}").map_err(io_err("writing the pid file"))?;
    f.sync_all().map_err(io_err("writing the pid file"))
}

fn pipe() -> Result<(File, File)> {
    let (r, w) = crate::sys::pipe().map_err(io_err("pipe"))?;
    Ok((File::from(r), File::from(w)))
}

fn redirect_stdio(log: Option<&File>) -> Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(io_err("opening /dev/null"))?;
    let out = log.unwrap_or(&null);
    for (from, to) in [(&null, 0), (out, 1), (out, 2)] {
        crate::sys::dup_onto(from.as_fd(), to).map_err(io_err("dup2"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    #[cfg_attr(miri, ignore = "starts a process and locks a file")]
    fn stop_with_an_endless_timeout_waits_for_the_exit() {
        // `Instant::now() + Duration::MAX` panics; `stop` must wait without
        // a deadline instead. A `sleep` stands in for the daemon, and a
        // thread holds the pid file's lock until that child exits.
        let path = std::env::temp_dir().join(format!("corepool-stop-{}.pid", std::process::id()));
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("run sleep");
        let child_pid = child.id() as i32;
        let child_fd = crate::sys::pidfd_open(child_pid).expect("pidfd_open");
        let file = lock_pid_file(&path).expect("lock the pid file");
        let started = crate::sys::process_start_time(child_pid).expect("start time");
        writeln!(&file, "{child_pid} {started}").expect("write the pid");
        let holder = std::thread::spawn(move || {
            let _ = child.wait();
            drop(file); // releases the lock, as the daemon's exit would
        });
        let (tx, rx) = mpsc::channel();
        let stop_path = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(stop(&stop_path, Duration::MAX));
        });
        // Through a pidfd taken before anyone could reap the child: never
        // reaches a process that reused its pid.
        let kill_child = || {
            crate::sys::pidfd_send_signal(
                std::os::fd::AsFd::as_fd(&child_fd),
                crate::sys::Signal::KILL,
            )
        };
        // A watchdog, not a timing check: a `stop` that never returns hangs.
        let result = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(result) => result,
            Err(e) => {
                kill_child();
                let _ = std::fs::remove_file(&path);
                panic!("stop did not return ({e}): the watchdog fails the test");
            }
        };
        if result.is_err() {
            kill_child(); // it never sent SIGTERM: free the holder
        }
        holder.join().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(result.unwrap(), child_pid);
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("corepool-{name}-{}.pid", std::process::id()))
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens files")]
    fn a_symbolic_link_at_the_pid_path_is_refused_and_its_target_untouched() {
        let target = temp_path("victim");
        let link = temp_path("link");
        std::fs::write(&target, "precious\n").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = lock_pid_file(&link).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        // `stop` does not follow it either.
        assert!(stop(&link, Duration::from_secs(1)).is_err());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&target).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens files")]
    fn a_new_pid_file_is_created_0644_and_a_reader_cannot_take_its_lock() {
        let path = temp_path("mode");
        let _ = std::fs::remove_file(&path);
        let file = lock_pid_file(&path).expect("lock");
        assert_eq!(file.metadata().unwrap().mode() & 0o777, 0o644);
        drop(file);
        // Someone who can only read the file cannot hold the daemon's lock:
        // a write lock needs a descriptor open for writing.
        let reader = File::open(&path).unwrap();
        assert!(!matches!(
            crate::sys::ofd_lock_exclusive(reader.as_fd()),
            Ok(true)
        ));
        let file = lock_pid_file(&path).expect("the reader holds nothing");
        drop((file, reader));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens files")]
    fn a_pid_file_of_another_user_is_refused() {
        let path = temp_path("foreign");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "").unwrap();
        // Only root can give a file away; elsewhere there is nothing to test.
        if std::os::unix::fs::chown(&path, Some(65534), None).is_ok() {
            let err = lock_pid_file(&path).unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "starts a process and locks a file")]
    fn stop_never_signals_a_process_that_reused_the_pid() {
        // The pid file names a live process, but with another start time:
        // the daemon that wrote it is gone and its pid was reused.
        let path = temp_path("reused");
        let _ = std::fs::remove_file(&path);
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("run sleep");
        let child_pid = child.id() as i32;
        let started = crate::sys::process_start_time(child_pid).expect("start time");
        let file = lock_pid_file(&path).expect("lock the pid file");
        writeln!(&file, "{child_pid} {}", started.wrapping_add(1)).unwrap();
        let result = stop(&path, Duration::from_secs(5));
        let alive = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        drop(file);
        std::fs::remove_file(&path).unwrap();
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains("not the daemon that wrote it"),
            "{err}"
        );
        assert!(alive, "the process that reused the pid was not signalled");
    }

    #[test]
    fn starting_with_threads_running_names_pools_and_processes() {
        // A second thread lives across the call, so it is always refused
        // (and nothing is forked), whatever the harness runs tests on.
        let (stop, parked) = mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = parked.recv();
        });
        let err = Daemon::new().start().unwrap_err();
        drop(stop);
        other.join().unwrap();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{text}");
        assert!(text.contains("starting a Process"), "{text}");
    }

    #[test]
    fn pid_records_parse_strictly() {
        assert_eq!(
            PidRecord::parse("42 123456\n"),
            Some(PidRecord {
                pid: 42,
                started: 123456
            })
        );
        for bad in ["", "42", "42 x", "-1 5", "0 5", "42 5 6", "x 5"] {
            assert_eq!(PidRecord::parse(bad), None, "{bad:?}");
        }
    }
}
