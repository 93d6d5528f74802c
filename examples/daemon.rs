//! A Unix daemon, as the seed describes: detached, adopted by init, doing a
//! periodic task in the background, stopped through its pid file.
//!
//! ```sh
//! cargo run --release --example daemon -- start /tmp/ticker.pid /tmp/ticker.log
//! tail -f /tmp/ticker.log          # a line every 200 ms
//! cargo run --release --example daemon -- start /tmp/ticker.pid /tmp/ticker.log  # refuses: already running
//! cargo run --release --example daemon -- stop /tmp/ticker.pid
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

fn usage() -> ! {
    eprintln!("usage: daemon start PID_FILE LOG_FILE | daemon stop PID_FILE");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["start", pid_file, log_file] => {
            let guard = match corepool::Daemon::new()
                .pid_file(pid_file)
                .log_file(log_file)
                .start()
            {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("daemon: {e}");
                    std::process::exit(1);
                }
            };
            // From here on we are the daemon: stdout goes to the log.
            // SAFETY: installs a handler that only stores to an atomic.
            unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
            let mut n = 0u64;
            while !STOP.load(Ordering::Relaxed) {
                println!("tick {n} from pid {}", std::process::id());
                n += 1;
                // The periodic task's own cadence.
                std::thread::sleep(Duration::from_millis(200));
            }
            println!("stopping after {n} ticks");
            drop(guard); // removes the pid file
        }
        ["stop", pid_file] => match corepool::daemon::stop(pid_file, Duration::from_secs(10)) {
            Ok(pid) => println!("stopped daemon pid {pid}"),
            Err(e) => {
                eprintln!("daemon: {e}");
                std::process::exit(1);
            }
        },
        _ => usage(),
    }
}
