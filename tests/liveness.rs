//! Liveness across processes: a holder that cannot be checked counts as
//! alive, a dead one is repaired, waits keep their deadlines while a live
//! peer is stopped, decoding a hostile handle never waits on its file, and a
//! privileged binary refuses worker mode. Runs with its own `main`.

mod common;

use corepool::{Error, Pipe, PipeEnd, Process, Queue, Value, Wire};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::Duration;

/// Whether process `pid` is stopped (SIGSTOP).
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
    })
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill takes plain integers; `pid` is a child of this test.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Runs `body` on a thread; fails the test if it has not returned within a
/// generous bound (a hang detector, not a timing check), after `on_hang`.
fn within_watchdog<R: Send + 'static>(
    body: impl FnOnce() -> R + Send + 'static,
    on_hang: impl FnOnce(),
) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(r) => {
            worker.join().unwrap();
            r
        }
        Err(_) => {
            on_hang();
            panic!("the call did not return: the watchdog fails the test");
        }
    }
}

/// Lowers this process's descriptor limit to zero (every open fails with
/// EMFILE) around `body`, then restores it.
fn at_descriptor_limit<R>(body: impl FnOnce() -> R) -> R {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a live `rlimit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &none), 0);
    }
    let emfile = std::fs::File::open("/proc/self/stat")
        .err()
        .and_then(|e| e.raw_os_error())
        == Some(libc::EMFILE);
    let out = body();
    // SAFETY: as above.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0) };
    assert!(emfile, "the limit did not bite");
    out
}

/// A producer that stops itself (SIGSTOP) right after claiming a slot.
fn put_42_stopping_mid_put(q: Queue<u64>) -> u64 {
    corepool::testing::stop_in_next_claim();
    q.put(&42).unwrap();
    0
}

fn a_live_holder_is_not_repaired_by_a_process_at_its_descriptor_limit() {
    let q = Queue::<u64>::new(4).unwrap();
    let holder = Process::start(put_42_stopping_mid_put, q.clone()).unwrap();
    common::eventually("the producer stopped mid-put", || is_stopped(holder.pid()));
    // The checker cannot read /proc (EMFILE): the producer is alive to it,
    // so it waits out its timeout instead of skipping the slot.
    let checker = Process::start(
        |q: Queue<u64>| -> u64 {
            at_descriptor_limit(|| match q.get_timeout(Duration::from_millis(200)) {
                Err(Error::Timeout) => 0,
                Ok(_) => 1,
                Err(_) => 2,
            })
        },
        q.clone(),
    )
    .unwrap();
    assert_eq!(checker.join().unwrap(), 0, "timed out, nothing taken");
    signal(holder.pid(), libc::SIGCONT);
    assert_eq!(holder.join().unwrap(), 0);
    // Had the slot been "repaired" under the live producer, its value would
    // be lost and the slot wedged.
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 42);
    q.put(&1).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 1);
}

fn a_pipe_peer_is_alive_to_a_process_at_its_descriptor_limit() {
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(
        |end: PipeEnd<u64>| -> u64 {
            at_descriptor_limit(|| match end.try_recv() {
                Ok(None) => 0,
                Ok(Some(_)) => 1,
                Err(Error::EndOfStream) => 2,
                Err(_) => 3,
            })
        },
        theirs,
    )
    .unwrap();
    assert_eq!(
        child.join().unwrap(),
        0,
        "the live parent was not taken for dead"
    );
    drop(mine);
}

/// A producer's claim with no owner tag (it died between winning the slot
/// and recording its tag), forged here, naming a live process: repaired when
/// that process does not map the queue (the holder's pid went to another
/// process), waited for while it does (it may be the holder).
fn an_untagged_claim_naming_a_live_unrelated_process_is_repaired() {
    let q = Queue::<u64>::new(4).unwrap();
    let mut stranger = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    corepool::testing::forge_untagged_put_claim(&q, stranger.id());
    q.put(&7).unwrap();
    // Another process takes the next value: it skips the forged slot.
    let taker = Process::start(
        |q: Queue<u64>| q.get_timeout(Duration::from_secs(30)).unwrap(),
        q.clone(),
    )
    .unwrap();
    assert_eq!(taker.join().unwrap(), 7);
    let _ = stranger.kill();
    let _ = stranger.wait();

    // Named for a live process that maps the queue: not repaired.
    let (ready, go) = (Queue::<u64>::new(1).unwrap(), Queue::<u64>::new(1).unwrap());
    let mapper = Process::start(
        |(q, ready, go): (Queue<u64>, Queue<u64>, Queue<u64>)| {
            ready.put(&1).unwrap();
            let v = go.get().unwrap();
            drop(q);
            v
        },
        (q.clone(), ready.clone(), go.clone()),
    )
    .unwrap();
    // Its argument, the queue, is mapped before it runs.
    assert_eq!(ready.get_timeout(Duration::from_secs(30)).unwrap(), 1);
    corepool::testing::forge_untagged_put_claim(&q, mapper.pid() as u32);
    q.put(&8).unwrap();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)),
        Err(Error::Timeout)
    ));
    go.put(&0).unwrap();
    assert_eq!(mapper.join().unwrap(), 0);
    // Gone: repaired.
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 8);
}

fn a_stopped_then_killed_holder_is_repaired() {
    let q = Queue::<u64>::new(4).unwrap();
    let holder = Process::start(put_42_stopping_mid_put, q.clone()).unwrap();
    common::eventually("the producer stopped mid-put", || is_stopped(holder.pid()));
    holder.kill().unwrap();
    assert!(holder.join().is_err());
    // Dead (and reaped): its slot is skipped, the queue goes on.
    q.put(&7).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 7);
}

fn put_timeout_keeps_its_deadline_while_a_reader_is_stopped_mid_copy() {
    let q = Queue::<Vec<u8>>::with_message_bytes(2, 1 << 20).unwrap();
    q.put(&vec![1u8; 1 << 19]).unwrap();
    q.put(&vec![2u8; 1 << 19]).unwrap();
    // The reader claims the first value and stops before copying it out.
    let reader = Process::start(
        |q: Queue<Vec<u8>>| -> u64 {
            corepool::testing::stop_in_next_claim();
            q.get().unwrap().len() as u64
        },
        q.clone(),
    )
    .unwrap();
    let pid = reader.pid();
    common::eventually("the reader stopped mid-get", || is_stopped(pid));
    // The queue is full, and the slot the put needs is the stopped reader's.
    let q2 = q.clone();
    let put = within_watchdog(
        move || q2.put_timeout(&vec![3u8; 8], Duration::from_millis(200)),
        || signal(pid, libc::SIGKILL),
    );
    assert!(matches!(put, Err(Error::Timeout)), "{put:?}");
    signal(pid, libc::SIGCONT);
    assert_eq!(reader.join().unwrap(), 1 << 19);
    assert_eq!(q.get().unwrap(), vec![2u8; 1 << 19]);
}

/// Decodes `bytes` as a `Value<u64>` on a thread, under the watchdog.
fn decode_within_watchdog(bytes: Vec<u8>) -> corepool::Result<Value<u64>> {
    within_watchdog(move || Value::<u64>::decode(&mut &bytes[..]), || {})
}

fn a_handle_naming_a_fifo_is_refused_without_blocking() {
    let dir = std::env::temp_dir().join(format!("corepool-liveness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fifo");
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let md = fifo.metadata().unwrap();
    let bytes = corepool::testing::forged_value_handle(
        std::process::id() as i32,
        std::os::fd::AsRawFd::as_raw_fd(&fifo),
        md.dev(),
        md.ino(),
    );
    let got = decode_within_watchdog(bytes);
    assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
    drop(fifo);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_handle_naming_a_leased_file_is_refused_without_waiting_for_the_lease() {
    // A lease break signals the holder (us) with SIGIO, whose default is to
    // terminate: ignore it.
    // SAFETY: installs SIG_IGN, no handler code.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    let dir = std::env::temp_dir().join(format!("corepool-lease-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("leased");
    std::fs::write(&path, [0u8; 4096]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // A read lease: anyone who opens the file for writing waits (up to
    // /proc/sys/fs/lease-break-time, 45 s) for us to give it up.
    // SAFETY: fcntl on a descriptor we hold.
    let leased = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    assert_eq!(leased, 0, "F_SETLEASE: {}", std::io::Error::last_os_error());
    let md = file.metadata().unwrap();
    let bytes =
        corepool::testing::forged_value_handle(std::process::id() as i32, fd, md.dev(), md.ino());
    let got = decode_within_watchdog(bytes);
    assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
    drop(file);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_setuid_binary_refuses_worker_mode() {
    if !common::is_root() {
        eprintln!("skipped: making a setuid binary needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("corepool-setuid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exe = dir.join("setuid-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    // Owned by `nobody`, setuid: run by root, its effective uid differs from
    // its real one, so the kernel marks it AT_SECURE.
    std::os::unix::fs::chown(&exe, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    for (var, refusal) in [
        ("COREPOOL_WORKER", "refusing worker mode"),
        ("COREPOOL_PROCESS", "refusing to run a Process child"),
    ] {
        let out = std::process::Command::new(&exe)
            .env(var, "v1:0:0:1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(refusal), "{var}: {stderr}");
        assert_eq!(out.status.code(), Some(101), "{var}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    corepool::init();
    // The process thread's eventfd lives for the program: create it before
    // the harness takes its descriptor baseline.
    Process::start(|x: u64| x, 0).unwrap().join().unwrap();
    common::run(common::tests![
        a_live_holder_is_not_repaired_by_a_process_at_its_descriptor_limit,
        a_pipe_peer_is_alive_to_a_process_at_its_descriptor_limit,
        an_untagged_claim_naming_a_live_unrelated_process_is_repaired,
        a_stopped_then_killed_holder_is_repaired,
        put_timeout_keeps_its_deadline_while_a_reader_is_stopped_mid_copy,
        a_handle_naming_a_fifo_is_refused_without_blocking,
        a_handle_naming_a_leased_file_is_refused_without_waiting_for_the_lease,
        a_setuid_binary_refuses_worker_mode,
    ]);
}
