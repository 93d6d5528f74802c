//! The Python `multiprocessing` baseline: runs `scripts/bench_mp.py` with an
//! interpreter (`python3` by default) and reads back its JSON rows.
//!
//! The script is the repository's `scripts/bench_mp.py` when that file exists
//! (so edits take effect), else the copy compiled into this binary, written
//! for the run into a fresh directory that only this user may enter, and
//! removed with it afterwards.

use crate::CliError;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The script as it was when this binary was built.
const EMBEDDED: &str = include_str!("../scripts/bench_mp.py");

/// Where the repository keeps it.
fn repo_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_mp.py")
}

/// One row as the script prints it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct PyRow {
    pub(crate) workload: String,
    pub(crate) system: String,
    pub(crate) workers: usize,
    pub(crate) items: u64,
    pub(crate) seconds: f64,
    pub(crate) rate: f64,
    pub(crate) unit: String,
    pub(crate) repeats: usize,
    pub(crate) rate_min: f64,
    pub(crate) rate_max: f64,
    pub(crate) seconds_min: f64,
    pub(crate) seconds_max: f64,
    #[serde(default)]
    pub(crate) note: Option<String>,
    /// The start method this row was timed with, when not the script's
    /// default (the `start` rows: fork and spawn).
    #[serde(default)]
    pub(crate) start_method: Option<String>,
}

/// What the script says about the interpreter.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub(crate) struct PyInfo {
    pub(crate) python: String,
    #[serde(default)]
    pub(crate) implementation: String,
    #[serde(default)]
    pub(crate) start_method: String,
    #[serde(default)]
    pub(crate) numpy: Option<String>,
}

/// The result of asking for the baseline.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The rows, in the script's order.
    Rows { info: PyInfo, rows: Vec<PyRow> },
    /// No Python installed (the default `python3` is not there): the message
    /// says what to do. Not an error.
    Unavailable(String),
}

/// The interpreter to run the script with, and who chose it.
#[derive(Debug, Clone)]
pub(crate) struct Interpreter {
    /// A path, or a name looked up in `$PATH`.
    pub(crate) path: String,
    /// The option or variable that named it (`--python`,
    /// `$COREPOOL_PYTHON`); `None` for the default `python3`. A named
    /// interpreter that cannot be started is an error, a missing default
    /// only skips the baseline.
    pub(crate) named_by: Option<&'static str>,
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) interpreter: Interpreter,
    pub(crate) workers: usize,
    pub(crate) repeat: usize,
    pub(crate) quick: bool,
    pub(crate) only: Vec<&'static str>,
    /// Items per run for every workload, instead of the script's sizes.
    pub(crate) size: Option<u64>,
    /// Tasks that share cpu_loop's iterations.
    pub(crate) cpu_loop_tasks: usize,
    pub(crate) timeout: Duration,
}

/// The embedded script written out for one run. Its directory is fresh and
/// private (mode 0700), so that no other user can plant a symlink or a
/// different script at the path Python is given; dropping this removes both.
#[derive(Debug)]
struct WrittenScript {
    path: PathBuf,
    /// Removes the directory if a signal ends the run (declared first:
    /// dropped, and so forgotten, before the directory goes).
    _on_signal: crate::cleanup::Registered,
    _dir: TempDir,
}

impl WrittenScript {
    fn new() -> Result<Self, CliError> {
        // Registered for a signal's cleanup only once it holds the script:
        // a signal in between leaves an empty private directory at worst.
        let dir = tempfile::Builder::new()
            .prefix("corepool-bench_mp-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| CliError::Write {
                path: std::env::temp_dir().display().to_string(),
                reason: format!("making a private directory for the Python script: {e}"),
            })?;
        let path = dir.path().join("bench_mp.py");
        // `create_new`: the directory is ours and empty, so nothing may be
        // there already; if something is, fail rather than follow it.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(EMBEDDED.as_bytes()))
            .map_err(|e| CliError::Write {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(WrittenScript {
            path,
            _on_signal: crate::cleanup::Registered::new(dir.path().to_path_buf()),
            _dir: dir,
        })
    }
}

/// The script to run, and the written copy to keep alive until Python is
/// done with it (`None` for the repository's own file).
fn script() -> Result<(PathBuf, Option<WrittenScript>), CliError> {
    let repo = repo_script();
    if repo.is_file() {
        return Ok((repo, None));
    }
    let written = WrittenScript::new()?;
    Ok((written.path.clone(), Some(written)))
}

/// The script's path as the user would type it (for messages and docs).
pub(crate) fn script_shown() -> String {
    let repo = repo_script();
    if repo.is_file() {
        // Relative to the working directory when it lies below it, so that
        // a table pasted into the README names no machine's paths.
        let shown = std::env::current_dir()
            .ok()
            .and_then(|cwd| repo.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .unwrap_or(repo);
        shown.display().to_string()
    } else {
        "the copy of scripts/bench_mp.py built into corepool".into()
    }
}

/// `cmd` as a shell command line, every argument included, to run by hand.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./,=:+@".contains(&b));
            if plain {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `tail`'s lines for a message, or a note that there were none.
fn error_lines(tail: &str) -> String {
    if tail.trim().is_empty() {
        "(it printed nothing on stderr)".into()
    } else {
        tail.to_string()
    }
}

/// Checks, before anything is measured, that the interpreter starts and
/// has `multiprocessing`: `Ok(None)` when it does, `Ok(Some(message))` when
/// the default `python3` is not installed (the rows are skipped), and an
/// error when a named interpreter is missing or fails, or when it does not
/// answer within `timeout`.
pub(crate) fn probe(interp: &Interpreter, timeout: Duration) -> Result<Option<String>, CliError> {
    let path = &interp.path;
    let shown = format!("{path} -c 'import sys, multiprocessing'");
    let child = crate::cleanup::Child::spawn(
        Command::new(path)
            .args(["-c", "import sys, multiprocessing"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return missing(interp, &e).map(|o| match o {
                Outcome::Unavailable(msg) => Some(msg),
                Outcome::Rows { .. } => None,
            })
        }
    };
    let mut stderr = child.process().stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now().checked_add(timeout);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                child.kill();
                let _ = child.wait();
                break Err(format!(
                    "`{shown}` ran longer than {timeout:?} and was killed: is it a Python 3 interpreter?"
                ));
            }
            // A poll at a human cadence: the check takes tens of ms.
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(format!("waiting for `{shown}`: {e}")),
        }
    };
    let err_text = err_reader.join().unwrap_or_default();
    match status {
        Ok(s) if s.success() => Ok(None),
        Ok(s) => Err(CliError::Python(format!(
            "`{shown}` {s}, so nothing was measured; {}its last error lines:\n{}",
            interp
                .named_by
                .map_or(String::new(), |by| format!("check what {by} names; ")),
            error_lines(&last_lines(&err_text))
        ))),
        Err(msg) => Err(CliError::Python(msg)),
    }
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// An interpreter that could not be started (`e`): skipped if it is the
/// default, an error if the user named it.
fn missing(interp: &Interpreter, e: &std::io::Error) -> Result<Outcome, CliError> {
    let interpreter = &interp.path;
    if !matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
    ) {
        return Err(CliError::Python(format!(
            "starting `{interpreter}` failed: {e}"
        )));
    }
    match interp.named_by {
        None => Ok(Outcome::Unavailable(format!(
            "no Python interpreter at `{interpreter}` ({e}): the python-mp rows are skipped. Install Python 3 (e.g. `apt-get install python3`) or pass `--python /path/to/python3`"
        ))),
        Some(by) => Err(CliError::Python(format!(
            "no Python interpreter at `{interpreter}` ({e}), which {by} names: give {by} the path of a Python 3 interpreter, or leave it out to use `python3`"
        ))),
    }
}

/// Runs the script. A missing default interpreter is
/// [`Outcome::Unavailable`]; a named one that cannot be started (missing, not
/// executable) is an error, as one that runs and fails is: the user asked for
/// that interpreter, so the same `--python` reports the same way whether the
/// path is wrong or the program is not a Python. A script that fails, prints
/// something unreadable or overruns the timeout is an error.
pub(crate) fn run(req: &Request) -> Result<Outcome, CliError> {
    let (path, _temp) = script()?;
    let interpreter = &req.interpreter.path;
    let mut cmd = Command::new(interpreter);
    cmd.arg(&path)
        .arg("--workers")
        .arg(req.workers.to_string())
        .arg("--repeat")
        .arg(req.repeat.to_string());
    if req.quick {
        cmd.arg("--quick");
    }
    if !req.only.is_empty() {
        cmd.arg("--only").arg(req.only.join(","));
    }
    if let Some(n) = req.size {
        for w in [
            "apply-async",
            "map",
            "latency",
            "cpu-loop",
            "shared-sum",
            "queue",
            "pipe-rtt",
        ] {
            cmd.arg(format!("--{w}")).arg(n.to_string());
        }
    }
    cmd.arg("--cpu-loop-tasks")
        .arg(req.cpu_loop_tasks.max(1).to_string());
    let shown = command_line(&cmd);
    // Python stays in our process group, so that a Ctrl-C reaches it and
    // its workers as it reaches us. But Python may hang on the
    // KeyboardInterrupt (multiprocessing.Pool does), so the signal's
    // cleanup kills the whole tree too (see `cleanup::Child`), as a timeout
    // does (below) and as SIGTERM or SIGHUP to corepool alone needs.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match crate::cleanup::Child::spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => return missing(&req.interpreter, &e),
    };
    let stdout = child.process().stdout.take();
    let mut stderr = child.process().stderr.take();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    // `None`: a timeout too long to add to now (`--python-timeout` near
    // u64::MAX seconds) means no deadline; `Instant + Duration` would panic.
    let deadline = Instant::now().checked_add(req.timeout);
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let next = match deadline {
            Some(deadline) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                child.kill();
                break;
            }
        }
    }
    let status = child.wait();
    let _ = reader.join();
    let err_text = err_reader.join().unwrap_or_default();
    let tail = error_lines(&last_lines(&err_text));
    if timed_out {
        return Err(CliError::Python(format!(
            "`{}` ran longer than {:?} and was killed; run it by hand to see where it stops",
            shown, req.timeout
        )));
    }
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(CliError::Python(format!(
                "`{shown}` {s}; its last error lines:\n{tail}"
            )))
        }
        Err(e) => return Err(CliError::Python(format!("waiting for Python: {e}"))),
    }
    parse(&lines)
}

/// Reads the script's output lines.
pub(crate) fn parse(lines: &[String]) -> Result<Outcome, CliError> {
    let mut info = PyInfo::default();
    let mut rows = Vec::new();
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            CliError::Python(format!("the script printed `{line}`, not JSON ({e})"))
        })?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("info") {
            info = serde_json::from_value(value)
                .map_err(|e| CliError::Python(format!("unreadable info line `{line}`: {e}")))?;
            continue;
        }
        let row: PyRow = serde_json::from_value(value)
            .map_err(|e| CliError::Python(format!("unreadable row `{line}`: {e}")))?;
        rows.push(row);
    }
    Ok(Outcome::Rows { info, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_and_rows() {
        let lines = vec![
            r#"{"kind": "info", "python": "3.11.7", "implementation": "CPython", "start_method": "fork", "numpy": null}"#.to_string(),
            r#"{"workload": "latency", "system": "python-mp", "workers": 2, "items": 10, "seconds": 0.1, "rate": 5000.0, "unit": "ns", "repeats": 1, "rate_min": 5000.0, "rate_max": 5000.0, "seconds_min": 0.1, "seconds_max": 0.1}"#.to_string(),
        ];
        let Outcome::Rows { info, rows } = parse(&lines).unwrap() else {
            panic!("rows expected")
        };
        assert_eq!(info.python, "3.11.7");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].unit, "ns");
        assert!(parse(&["oops".to_string()]).is_err());
    }

    #[test]
    fn the_embedded_script_is_the_repository_one() {
        if let Ok(text) = std::fs::read_to_string(repo_script()) {
            assert_eq!(text, EMBEDDED);
        }
    }

    #[test]
    fn the_embedded_script_is_written_into_a_fresh_private_directory() {
        let first = WrittenScript::new().unwrap();
        let dir = first.path.parent().unwrap().to_path_buf();
        // The directory is a real one (not a symlink), made for this run
        // under the temporary directory, and only its owner may enter it.
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir(), "{}", dir.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o700,
            "{}",
            dir.display()
        );
        assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("corepool-bench_mp-"), "{name}");
        // The script is the only thing in it, as it was compiled in.
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(entries.len(), 1);
        assert!(std::fs::symlink_metadata(&first.path).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&first.path).unwrap(), EMBEDDED);
        // Each run gets a directory of its own, not a predictable name.
        let second = WrittenScript::new().unwrap();
        assert_ne!(second.path.parent().unwrap(), dir);
        // Both go away with the run.
        drop(first);
        assert!(!dir.exists(), "{} was left behind", dir.display());
        let second_dir = second.path.parent().unwrap().to_path_buf();
        drop(second);
        assert!(!second_dir.exists());
    }
}
