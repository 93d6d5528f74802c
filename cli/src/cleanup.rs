//! Temporary files and directories that must not outlive the command, even
//! when SIGINT (Ctrl-C), SIGTERM or SIGHUP ends it: the fatal signal's
//! default action runs no destructor, so a signal thread removes every path
//! still registered here, then ends the process with that same signal (the
//! shell still sees 130 for Ctrl-C). Registered paths are the `--plot`
//! temporary file and the built-in Python script's directory.

use std::path::PathBuf;
use std::sync::Mutex;

/// The paths to remove on a fatal signal, by registration number.
static REGISTERED: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The signals that end the command after the cleanup.
const FATAL: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

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
                remove_all();
                // The default action now: the process ends by `signal`. A
                // failure to re-raise still must not leave us running.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
}

/// Removes every registered path (files, or directories with what is in
/// them). Whatever is gone already is fine.
fn remove_all() {
    let paths = std::mem::take(&mut *lock());
    for (_, path) in paths {
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

fn lock() -> std::sync::MutexGuard<'static, Vec<(u64, PathBuf)>> {
    // A panic while holding it left a valid Vec: keep going.
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path removed if a fatal signal ends the command while this lives;
/// dropping it only forgets the path (its owner removes or keeps it).
#[derive(Debug)]
pub(crate) struct Registered(u64);

impl Registered {
    pub(crate) fn new(path: PathBuf) -> Self {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock().push((id, path));
        Registered(id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock().retain(|(id, _)| *id != self.0);
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
        remove_all();
        assert!(!file.exists());
        assert!(!sub.exists());
        assert!(kept.exists(), "a dropped registration is forgotten");
    }
}
