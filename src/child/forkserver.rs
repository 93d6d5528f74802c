//! The fork server, parent side: [`StartMethod`], the one zygote of the
//! program (`child::zygote`, started lazily in the background, restarted
//! when it is found dead) and the request that has it fork a child for us.
//!
//! Why: an exec'd child pays about a millisecond of CPU before `main` (the
//! dynamic loader, relocations, the C library's CPU detection), which a
//! child forked from an already started zygote skips. Why not a fork of the
//! pool's process itself: it is multithreaded and may be large (see
//! `child::spawn`); the zygote is neither.
//!
//! The zygote is started by a thread of its own, `corepool-forkserver`, that
//! lives as long as the program: the zygote's parent-death signal, and that
//! of every child it forks (their parent is that same thread, through
//! `CLONE_PARENT`), fire when *that thread* exits. It also reaps the zygote
//! when it dies. The children themselves are ours like exec'd ones: the
//! supervisor that asked for them reaps them.
//!
//! A spawn that finds no zygote never waits for one: it asks the thread to
//! start one and execs its own child meanwhile, the zygote's start running
//! beside it (on another CPU); the spawns after it wait a little for the
//! zygote's hello ([`STARTING_WAIT`]) and use it, or exec if it is late.
//! So the program's first fork-server pool costs no more than an exec'd
//! one.
//!
//! Every failure of the zygote (dead, not answering within
//! [`REQUEST_TIMEOUT`], a different build) makes the spawn fall back to
//! exec, never hang; a dead zygote is replaced at the next spawn.

mod request;

use crate::child::spawn::Reexec;
use crate::child::zygote::{self, Hello};
use crate::sys;
use crate::sys::inherit;
use request::{is_set_up_failure, request, Health};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a pool starts its worker processes
/// ([`PoolBuilder::start_method`](crate::PoolBuilder::start_method)).
///
/// - [`ForkServer`](StartMethod::ForkServer), the default (Python's
///   `forkserver`, Linux's default since Python 3.14): the first pool
///   starts one more process, the *fork server* (this executable, started
///   once, single-threaded), and every worker started once it is ready is
///   forked from it: a worker starts in a fraction of the time of an exec,
///   as it skips the executable's loading and the C library's start-up. No
///   pool waits for the fork server: it starts in the background, and the
///   workers started meanwhile (the first pool's, typically) are exec'd, so
///   that the first pool costs no more than with `Spawn`.
/// - [`Spawn`](StartMethod::Spawn): each worker is this executable started
///   anew (`posix_spawn` of `/proc/self/exe`).
///
/// Either way, workers are children of *this* process (reaped, killed and
/// replaced alike), pinned, in a process group of their own, and start
/// with what an exec'd child of the program **of the moment** inherits:
/// unlike Python's fork server, a forked worker is given the program's
/// working directory, umask, resource limits, ignored signals (and an
/// empty signal mask), nice value and scheduling policy, I/O priority,
/// timer slack, huge-page setting, standard output and error, and
/// descriptors without close-on-exec of the moment it starts (those of the
/// spawning thread, for what is per thread). What a fork cannot give is
/// compared before each worker instead:
/// - the environment and the stack's limit (read at start, by the dynamic
///   loader, the C library, the program's libraries' constructors, the
///   kernel): a program that changed them gets its fork server started
///   again (the workers started meanwhile are exec'd), so workers always
///   see the program's environment of the moment;
/// - credentials, capabilities, `no_new_privs`, the seccomp mode and
///   filters, namespaces, control groups, root directory, execution domain
///   (`personality`), security bits: a program that changed them (dropped
///   root, sandboxed itself) gets its workers exec'd from then on.
///
/// Not seen: a Landlock domain the program entered after its fork server
/// started (no system call tells), and `pthread_atfork` handlers that its
/// libraries' constructors registered (the fork server's child runs none):
/// a program that restricts itself with Landlock, or that links such a
/// library, calls [`stop_fork_server`] after or uses `Spawn`. The fork
/// server lives until the program exits (or [`stop_fork_server`]); it dies
/// with the program, whatever ends it, and is reaped by the program itself
/// when it exits normally. If it cannot be used (it died, does
/// not answer, or cannot fork soundly on this system), workers are exec'd
/// instead, and a dead fork server is started again at the next worker's
/// start.
///
/// ```
/// use corepool::{Pool, StartMethod};
///
/// fn main() -> corepool::Result<()> {
///     // The default; `.start_method(StartMethod::Spawn)` execs each worker.
///     assert_eq!(StartMethod::default(), StartMethod::ForkServer);
///     let pool = Pool::builder().workers(2).build()?;
///     assert_eq!(pool.map(|x: u64| x * 2, vec![1, 2, 3])?, vec![2, 4, 6]);
///     // Workers are children of this process, whichever the method.
///     let parent = pool.apply(|_: ()| std::os::unix::process::parent_id(), ())?;
///     assert_eq!(parent, std::process::id());
///     drop(pool);
///     // A worker sees the program's environment of the moment.
///     std::env::set_var("STAGE", "two");
///     let pool = Pool::builder().workers(1).build()?;
///     let stage = pool.apply(|_: ()| std::env::var("STAGE").unwrap_or_default(), ())?;
///     assert_eq!(stage, "two");
///     drop(pool);
///     assert!(corepool::fork_server_pid().is_some()); // it outlives the pools
///     corepool::stop_fork_server(); // optional: the program's exit reaps it anyway
///     assert_eq!(corepool::fork_server_pid(), None);
///     Ok(())
/// }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// Each worker is this executable started anew.
    Spawn,
    /// Each worker is forked from the program's fork server, started on
    /// first use (the default).
    #[default]
    ForkServer,
}

/// How long a request may wait for the zygote's answer before the zygote is
/// taken for hung: killed, and the spawn falls back to exec. A fork of the
/// small zygote takes well under a millisecond; this is for a stopped or
/// wedged one.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new zygote may take to say it is ready (it is exec'd: on a
/// loaded machine that can take seconds). Spawns do not wait for it (they
/// exec meanwhile); [`fork_server_pid`] does.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a spawn waits for the hello of a zygote that an earlier spawn
/// started, before it execs its child instead: a few times what a zygote
/// on an idle machine takes to start.
const STARTING_WAIT: Duration = Duration::from_millis(5);

/// After a zygote failed to start (no hello in time, or the start itself
/// failed), spawns use exec for this long before another start is tried:
/// a zygote that cannot start must not cost every spawn [`HELLO_TIMEOUT`].
const START_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Why the fork server did not start a child.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The fork server cannot be used now (the reason): start the child
    /// with exec instead. Nothing of the attempt is left running.
    Fallback(String),
    /// The fork server works, but this child could not be started (the
    /// fork failed): what exec would have answered too. (A failed set-up
    /// of the forked child is a [`Refusal::Fallback`]: the zygote's limits
    /// are the program's of the past.) Nothing is left running.
    Failed(std::io::Error),
    /// No zygote is ready yet; one is starting (this spawn may have started
    /// it): start the child with exec meanwhile. Not a failure.
    Starting,
}

/// The running zygote, as the parent holds it.
#[derive(Debug)]
struct Zygote {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    socket: OwnedFd,
    /// What the thread that started it could do, which it and every child
    /// it forks inherited (see [`sys::Privileges`]).
    privileges: std::io::Result<sys::Privileges>,
    /// What it said it has when it was ready (`None`: before its hello).
    hello: Option<Hello>,
}

impl Zygote {
    /// Kills it (the fork-server thread, which watches its pidfd, reaps it).
    fn discard(self) {
        sys::pidfd_send_signal(self.pidfd.as_fd(), sys::Signal::KILL);
    }

    fn has_exited(&self) -> bool {
        sys::readable_now(self.pidfd.as_fd())
    }
}

/// What the fork-server thread is asked to do.
enum ThreadCommand {
    /// Start a zygote and hand it over.
    Start(crossbeam_channel::Sender<std::io::Result<Zygote>>),
    /// Kill and reap every zygote it started, then say so.
    ReapAll(crossbeam_channel::Sender<()>),
}

/// The fork-server thread's handle.
struct Thread {
    tx: crossbeam_channel::Sender<ThreadCommand>,
    wake: Arc<OwnedFd>,
}

impl Thread {
    fn ask(&self, command: ThreadCommand) -> bool {
        let sent = self.tx.send(command).is_ok();
        sys::eventfd_signal(self.wake.as_fd());
        sent
    }
}

/// The program's fork server.
struct State {
    /// The process this state belongs to (0: none yet): a `fork()`ed copy of
    /// the program has no fork-server thread and must not talk to the
    /// original's zygote.
    owner: u32,
    thread: Option<Thread>,
    zygote: Option<Zygote>,
    /// Why the fork server can never be used in this process, once known.
    unusable: Option<String>,
    /// How many spawns fell back to exec, and why the last one did.
    fallbacks: u64,
    last_fallback: Option<String>,
    /// How many children the zygote forked for this process.
    forked: u64,
    /// How many zygotes were retired because the program's environment or
    /// stack limit changed since they started.
    restarts: u64,
    /// No zygote start before this instant (after one failed).
    no_start_before: Option<Instant>,
    /// The zygote being started, until its hello is read.
    starting: Option<Starting>,
}

/// A zygote asked of the fork-server thread and not yet ready.
struct Starting {
    /// The thread's answer: the zygote process, once started.
    reply: crossbeam_channel::Receiver<std::io::Result<Zygote>>,
    /// The zygote, once the thread handed it over.
    zygote: Option<Zygote>,
    /// Its hello must have come by then.
    deadline: Instant,
}

static STATE: Mutex<State> = Mutex::new(State {
    owner: 0,
    thread: None,
    zygote: None,
    unusable: None,
    fallbacks: 0,
    last_fallback: None,
    forked: 0,
    restarts: 0,
    no_start_before: None,
    starting: None,
});

/// Starts `reexec`'s child through the fork server: its pid once it runs,
/// set up as an exec'd one would be.
pub(crate) fn spawn(reexec: &Reexec) -> Result<i32, Refusal> {
    let mut state = crate::sync::lock(&STATE);
    let spawned = spawn_locked(&mut state, reexec);
    match &spawned {
        Ok(_) => state.forked += 1,
        Err(Refusal::Fallback(why)) => {
            state.fallbacks += 1;
            state.last_fallback = Some(why.clone());
        }
        Err(_) => {}
    }
    spawned
}

/// How many children the zygote forked for this process (for tests).
#[allow(dead_code)] // read by the unit tests
pub(crate) fn forked_children() -> u64 {
    crate::sync::lock(&STATE).forked
}

/// How many zygotes were started again because the program's environment
/// or stack limit changed (for tests).
#[allow(dead_code)] // read by the unit tests
pub(crate) fn restarts() -> u64 {
    crate::sync::lock(&STATE).restarts
}

/// How many spawns fell back to exec in this process, and why the last did
/// (for tests and diagnostics).
#[allow(dead_code)] // read by the unit tests
pub(crate) fn fallbacks() -> (u64, Option<String>) {
    let state = crate::sync::lock(&STATE);
    (state.fallbacks, state.last_fallback.clone())
}

fn spawn_locked(state: &mut State, reexec: &Reexec) -> Result<i32, Refusal> {
    let me = sys::current_pid();
    if state.owner == 0 {
        state.owner = me;
    } else if state.owner != me {
        return Err(Refusal::Fallback(
            "a fork()ed copy of the program has no fork server".into(),
        ));
    }
    if let Some(why) = &state.unusable {
        return Err(Refusal::Fallback(why.clone()));
    }
    // A zygote found dead before the request is replaced at once; one that
    // dies during it makes this spawn fall back, and the next replace it.
    if state.zygote.as_ref().is_some_and(Zygote::has_exited) {
        if let Some(dead) = state.zygote.take() {
            dead.discard();
        }
    }
    if state.zygote.is_none() {
        // A start an earlier spawn began: its hello is due about now, and a
        // short wait for it costs less than another exec beside it (on a
        // machine with few CPUs, the exec'd children and the zygote's own
        // start compete for them). A hello not come by then leaves it
        // starting, and this child is exec'd.
        let wait = state
            .starting
            .as_ref()
            .map(|_| Instant::now() + STARTING_WAIT);
        advance_start(state, wait)?;
    }
    let Some(zygote) = state.zygote.take() else {
        if state.starting.is_some() {
            return Err(Refusal::Starting);
        }
        if state.no_start_before.is_some_and(|t| Instant::now() < t) {
            return Err(Refusal::Fallback(
                "the fork server failed to start a moment ago".into(),
            ));
        }
        begin_start(state)?;
        return Err(Refusal::Starting);
    };
    // A program that dropped privileges or sandboxed itself since the
    // zygote started (setuid, capabilities, no_new_privs, seccomp) must not
    // get workers with the old ones, which it could not even kill. Such
    // changes last, and no_new_privs and seccomp are per thread (the
    // fork-server thread keeps the old ones): exec from now on. Dropping
    // the zygote closes its socket, which ends it even when the program
    // may no longer signal it.
    if !same_privileges(&zygote) {
        drop(zygote);
        let why = "the program's credentials, capabilities or sandbox changed since the fork server started: workers are exec'd from now on".to_string();
        state.unusable = Some(why.clone());
        return Err(Refusal::Fallback(why));
    }
    // A stopped zygote (SIGSTOP, a debugger) would answer only after the
    // request's timeout, the slot empty meanwhile: seen stopped, it is
    // retired and this child exec'd at once, as a timeout would end. What
    // cannot be read is asked as usual (the timeout still bounds it).
    if matches!(sys::process_state_and_start_time(zygote.pid), Ok((letter, _)) if letter == 'T' || letter == 't')
    {
        zygote.discard();
        return Err(Refusal::Fallback("the fork server is stopped".into()));
    }
    // What a forked child gets from the zygote and cannot be given
    // otherwise must be what an exec'd child of the program of the moment
    // would get.
    let status = match inherit::thread_status() {
        Ok(status) => status,
        Err(e) => {
            state.zygote = Some(zygote);
            return Err(Refusal::Fallback(format!(
                "/proc/thread-self/status unreadable: {e}"
            )));
        }
    };
    let limits = inherit::limits();
    let Some(hello) = zygote.hello else {
        zygote.discard();
        return Err(Refusal::Fallback("the fork server never said hello".into()));
    };
    if zygote::fixed_fingerprint(&status) != hello.fixed {
        // Per thread, some of it (namespaces): a zygote started again by
        // the fork-server thread could have the old ones. Exec from now on.
        drop(zygote);
        let why = "the program's namespaces, control groups, root directory, execution domain, security bits or seccomp filters changed since the fork server started: workers are exec'd from now on".to_string();
        state.unusable = Some(why.clone());
        return Err(Refusal::Fallback(why));
    }
    // Process-wide, and read only at exec (by the loader, the C library,
    // the program's libraries' constructors; the kernel, for the stack):
    // a zygote started again has the program's of the moment.
    if zygote::environment_fingerprint() != hello.environment {
        return Err(restart(state, zygote, "the environment changed"));
    }
    if limits[inherit::LIMIT_STACK] != hello.stack_limit {
        return Err(restart(state, zygote, "the stack's resource limit changed"));
    }
    let (result, health) = request(&zygote, reexec, &status, &limits);
    match health {
        Health::Fine => state.zygote = Some(zygote),
        Health::Broken(_) => zygote.discard(),
    }
    match (result, health) {
        (Ok(pid), _) => Ok(pid),
        // The zygote is fine, but it could not set this child up as the
        // program is now (a descriptor number beyond the zygote's older
        // descriptor limit, say): exec can.
        (Err(e), Health::Fine) if is_set_up_failure(&e) => Err(Refusal::Fallback(e.to_string())),
        (Err(e), Health::Fine) => Err(Refusal::Failed(e)),
        (Err(_), Health::Broken(why)) => Err(Refusal::Fallback(why)),
    }
}

/// Whether the spawning thread may do exactly what the zygote's starter
/// could: anything unreadable on either side counts as a difference.
fn same_privileges(zygote: &Zygote) -> bool {
    match (&zygote.privileges, sys::Privileges::of_this_thread()) {
        (Ok(then), Ok(now)) => *then == now,
        _ => false,
    }
}

/// Retires a zygote whose start-time state is no longer the program's
/// (`why`) and starts another, which will have the program's of the
/// moment; this spawn execs meanwhile.
fn restart(state: &mut State, zygote: Zygote, why: &str) -> Refusal {
    zygote.discard();
    state.restarts += 1;
    let why = format!("{why} since the fork server started: it is started again");
    match begin_start(state) {
        Ok(()) => Refusal::Fallback(why),
        Err(refusal) => refusal,
    }
}

/// The fork server's pid, while one runs (started by the first pool built
/// with [`StartMethod::ForkServer`], the default, living until the program
/// exits or [`stop_fork_server`]).
///
/// The fork server starts in the background (that first pool's workers are
/// started without it meanwhile): if it is still starting, this waits until
/// it is ready, or found unable to start, and the pools built after it
/// returns a pid get their workers from it.
///
/// ```
/// // No pool asked for one yet in this program.
/// assert_eq!(corepool::fork_server_pid(), None);
/// ```
pub fn fork_server_pid() -> Option<i32> {
    loop {
        let mut state = crate::sync::lock(&STATE);
        if state.owner != sys::current_pid() {
            return None;
        }
        if state.zygote.is_none() && state.starting.is_some() {
            // Short waits, the lock let go between them so that other
            // pools' spawns go on meanwhile; the start's own deadline ends
            // it (`advance_start` then gives it up).
            let _ = advance_start(&mut state, Some(Instant::now() + STARTING_WAIT));
            if state.zygote.is_none() && state.starting.is_some() {
                continue;
            }
        }
        return state
            .zygote
            .as_ref()
            .filter(|z| !z.has_exited())
            .map(|z| z.pid);
    }
}

/// Stops the fork server, if one runs (or is still starting), and waits
/// until it is reaped; returns whether one ran. Workers it started are not affected (they are
/// this process's children, not its own). A later pool built with
/// [`StartMethod::ForkServer`] starts a new one.
///
/// Not needed before exiting: when the program exits (`main` returns, or
/// `std::process::exit`), an exit handler kills and reaps the fork server,
/// as it does every pool's workers still running then; and whatever ends
/// the program otherwise (a signal, `_exit`), the kernel's parent-death
/// signal kills it. Call this when a program wants no process of its own
/// left besides its pools' workers (a test that counts children, say), or
/// before it restricts itself in a way the fork server cannot see (see
/// [`StartMethod::ForkServer`]).
///
/// ```
/// assert!(!corepool::stop_fork_server()); // none ran
/// ```
pub fn stop_fork_server() -> bool {
    let mut state = crate::sync::lock(&STATE);
    if state.owner != sys::current_pid() {
        return false;
    }
    let mut ran = state.zygote.take().is_some_and(|z| !z.has_exited());
    // A zygote still starting is killed too: dropping the answer's receiver
    // makes the thread kill one it starts from now on, and the reaping
    // below covers one it already handed over.
    if let Some(starting) = state.starting.take() {
        ran = true;
        if let Some(zygote) = starting.zygote {
            zygote.discard();
        }
    }
    if let Some(thread) = &state.thread {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if thread.ask(ThreadCommand::ReapAll(tx)) {
            let _ = rx.recv();
        }
    }
    ran
}

/// Asks the fork-server thread (started the first time) for a zygote,
/// without waiting: the zygote is [`Starting`] until its hello is read
/// ([`advance_start`]).
fn begin_start(state: &mut State) -> Result<(), Refusal> {
    if state.thread.is_none() {
        match start_thread() {
            Ok(thread) => state.thread = Some(thread),
            Err(e) => {
                return Err(start_failed(
                    state,
                    format!("starting the fork-server thread: {e}"),
                ))
            }
        }
    }
    let Some(thread) = &state.thread else {
        return Err(start_failed(state, "no fork-server thread".into()));
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    if !thread.ask(ThreadCommand::Start(tx)) {
        return Err(start_failed(state, "the fork-server thread is gone".into()));
    }
    state.starting = Some(Starting {
        reply: rx,
        zygote: None,
        deadline: Instant::now() + HELLO_TIMEOUT,
    });
    Ok(())
}

/// A zygote's start failed (why): no other is tried for
/// [`START_RETRY_PAUSE`], and the spawn falls back to exec.
fn start_failed(state: &mut State, why: String) -> Refusal {
    state.starting = None;
    state.no_start_before = Some(Instant::now() + START_RETRY_PAUSE);
    Refusal::Fallback(why)
}

/// Moves a starting zygote on: the thread's answer and then the zygote's
/// hello, each read if it has come (waiting for them until `wait_until`,
/// if given, and never past the start's own deadline). A zygote whose hello
/// is read and right becomes `state.zygote`; one that failed, or whose
/// deadline passed, is discarded, and the failure returned. Nothing
/// starting, or still starting: `Ok`.
fn advance_start(state: &mut State, wait_until: Option<Instant>) -> Result<(), Refusal> {
    let Some(starting) = state.starting.as_mut() else {
        return Ok(());
    };
    let until = wait_until.map(|t| t.min(starting.deadline));
    if starting.zygote.is_none() {
        let answer = match until {
            None => starting.reply.try_recv().map_err(|e| e.is_disconnected()),
            Some(t) => starting
                .reply
                .recv_deadline(t)
                .map_err(|e| e.is_disconnected()),
        };
        match answer {
            Ok(Ok(zygote)) => starting.zygote = Some(zygote),
            Ok(Err(e)) => {
                return Err(start_failed(
                    state,
                    format!("starting the fork server: {e}"),
                ))
            }
            Err(true) => return Err(start_failed(state, "the fork-server thread is gone".into())),
            // Not started yet: the thread is alive, so it answers soon.
            Err(false) if Instant::now() < starting.deadline => return Ok(()),
            Err(false) => {
                // A dropped receiver makes the thread kill the zygote.
                return Err(start_failed(
                    state,
                    "the fork-server thread did not start the fork server in time".into(),
                ));
            }
        }
    }
    let Some(zygote) = starting.zygote.as_ref() else {
        return Ok(());
    };
    let hello_came = match until {
        None => sys::readable_now(zygote.socket.as_fd()),
        Some(t) => matches!(sys::readable_before(zygote.socket.as_fd(), t), Ok(true)),
    };
    if !hello_came && Instant::now() < starting.deadline {
        return Ok(());
    }
    let Some(mut zygote) = state.starting.take().and_then(|s| s.zygote) else {
        return Ok(());
    };
    if !hello_came {
        zygote.discard();
        return Err(start_failed(
            state,
            "the fork server did not say it was ready".into(),
        ));
    }
    match read_hello(state, &mut zygote) {
        Ok(()) => {
            state.no_start_before = None;
            state.zygote = Some(zygote);
            Ok(())
        }
        Err(why) => {
            zygote.discard();
            Err(start_failed(state, why))
        }
    }
}

/// Reads the zygote's hello (it has come) and checks it: the same build as
/// ours, and able to fork here. A build or system it can never work with
/// makes the fork server unusable in this process.
fn read_hello(state: &mut State, zygote: &mut Zygote) -> Result<(), String> {
    let mut buf = [0u8; 512];
    let text = match sys::receive_message(zygote.socket.as_fd(), &mut buf) {
        Ok(Some((len, _))) => String::from_utf8_lossy(&buf[..len]).into_owned(),
        _ => return Err("the fork server did not say it was ready".into()),
    };
    let ours = crate::child::fingerprint::fingerprint();
    match text.split_once(' ') {
        Some(("v2", rest)) if rest.starts_with("ok ") => match Hello::parse(&rest[3..]) {
            Some(hello) if hello.build == ours => {
                zygote.hello = Some(hello);
                Ok(())
            }
            Some(_) => {
                let why = "the fork server runs a different build than this process".to_string();
                state.unusable = Some(why.clone());
                Err(why)
            }
            None => Err(format!("the fork server said {text:?} on starting")),
        },
        Some(("v2", rest)) if rest.starts_with("no ") => {
            let why = format!("the fork server cannot fork here: {}", &rest[3..]);
            state.unusable = Some(why.clone());
            Err(why)
        }
        _ => Err(format!("the fork server said {text:?} on starting")),
    }
}

/// The fork-server thread: starts zygotes when asked (so that it is their
/// parent, and their children's, for good) and reaps each when it exits.
fn start_thread() -> std::io::Result<Thread> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(sys::eventfd()?);
    let thread_wake = wake.clone();
    // Never joined: it lives as long as the program, which is what the
    // parent-death signals of the zygote and its children rely on.
    std::thread::Builder::new()
        .name("corepool-forkserver".into())
        .spawn(move || serve_thread(&rx, thread_wake.as_fd()))?;
    // At the program's exit, the zygotes are killed and reaped by us rather
    // than by `init` after their parent-death signal (see `exit_hook`).
    // Registered for good: the thread never ends.
    let (exit_tx, exit_wake) = (tx.clone(), wake.clone());
    std::mem::forget(crate::child::exit_hook::register(Arc::new(move || {
        let (reaped_tx, reaped) = crossbeam_channel::bounded(1);
        let asked = exit_tx.send(ThreadCommand::ReapAll(reaped_tx)).is_ok();
        sys::eventfd_signal(exit_wake.as_fd());
        Box::new(move |deadline| {
            if asked {
                let _ = reaped.recv_deadline(deadline);
            }
        }) as crate::child::exit_hook::Wait
    })));
    Ok(Thread { tx, wake })
}

fn serve_thread(rx: &crossbeam_channel::Receiver<ThreadCommand>, wake: BorrowedFd<'_>) {
    // The zygotes this thread started and has not reaped.
    let mut zygotes: Vec<(i32, Arc<OwnedFd>)> = Vec::new();
    let mut ready = Vec::new();
    loop {
        let mut fds = vec![wake];
        fds.extend(zygotes.iter().map(|(_, pidfd)| pidfd.as_fd()));
        if sys::poll_readable(&fds, &mut ready, None).is_err() {
            // Nothing to lose by waiting: look again after a pause.
            std::thread::sleep(Duration::from_millis(10));
            ready = vec![true; fds.len()];
        }
        drop(fds);
        let mut flags = ready.iter().skip(1);
        zygotes.retain(|&(pid, _)| {
            // A readable pidfd: it exited; reap it (waitpid on its pid only).
            !(flags.next().copied().unwrap_or(false) && matches!(sys::try_wait(pid), Ok(Some(_))))
        });
        sys::eventfd_drain(wake);
        while let Ok(command) = rx.try_recv() {
            match command {
                ThreadCommand::Start(reply) => {
                    let started = start_zygote_process();
                    if let Ok(zygote) = &started {
                        zygotes.push((zygote.pid, zygote.pidfd.clone()));
                    }
                    if let Err(crossbeam_channel::SendError(Ok(zygote))) = reply.send(started) {
                        zygote.discard();
                    }
                }
                ThreadCommand::ReapAll(reply) => {
                    for (pid, pidfd) in zygotes.drain(..) {
                        sys::pidfd_send_signal(pidfd.as_fd(), sys::Signal::KILL);
                        let _ = sys::wait_exit(pid);
                    }
                    let _ = reply.send(());
                }
            }
        }
    }
}

/// Starts the zygote process: this executable, with the zygote's variable
/// and one end of a socket pair, in a process group of its own (so that a
/// terminal's Ctrl-C reaches it only through its parent's death).
fn start_zygote_process() -> std::io::Result<Zygote> {
    // Read on this thread, the one the zygote inherits from.
    let privileges = sys::Privileges::of_this_thread();
    let (ours, theirs) = sys::seqpacket_pair()?;
    let token = zygote::make_token(theirs.as_raw_fd(), std::process::id() as i32);
    // Only the standard streams and its socket: a descriptor the program
    // holds now without close-on-exec (a pipe's write end, say) must not
    // stay open in the zygote, and in every child it forks, after the
    // program closed it.
    let inherited = sys::inheritable_descriptors(theirs.as_raw_fd());
    let pid = Reexec {
        env: (zygote::ZYGOTE_ENV, token),
        keep_fds: vec![theirs.as_raw_fd()],
        cpus: None,
        own_group: true,
    }
    .spawn_closing(&inherited)?;
    drop(theirs);
    match sys::pidfd_open(pid) {
        Ok(pidfd) => Ok(Zygote {
            pid,
            pidfd: Arc::new(pidfd),
            socket: ours,
            privileges,
            hello: None,
        }),
        Err(e) => {
            // Not reaped yet, so the pid is still its own.
            sys::signal_child(pid, sys::Signal::KILL);
            let _ = sys::wait_exit(pid);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the vDSO is mapped in process `pid`: chosen at random at exec,
    /// so a child forked from the fork server has the fork server's.
    fn vdso_of(pid: i32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap_or_default()
            .lines()
            .find(|line| line.ends_with("[vdso]"))
            .and_then(|line| line.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    }

    /// Under the library's own unit-test harness (many threads, other tests
    /// building pools meanwhile, all on the default fork server): a pool
    /// built once the fork server is ready gets its workers from it.
    #[test]
    #[cfg_attr(miri, ignore = "Miri starts no processes")]
    fn a_fork_server_pool_in_the_librarys_unit_tests() {
        let builder = || {
            crate::Pool::builder()
                .workers(2)
                .start_method(StartMethod::ForkServer)
        };
        // Starts the fork server if no other test did (its one worker is
        // then exec'd while the fork server starts).
        let first = builder().workers(1).build().unwrap();
        assert_eq!(first.apply(|x: u64| x * 2, 21).unwrap(), 42);
        drop(first);
        // Waits for the fork server's hello.
        let zygote = fork_server_pid().expect("the fork server runs");
        let pool = builder().build().unwrap();
        assert_eq!(pool.apply(|x: u64| x * 2, 21).unwrap(), 42);
        let theirs = vdso_of(zygote);
        assert!(!theirs.is_empty());
        for pid in pool.pids() {
            assert_eq!(vdso_of(pid), theirs, "worker {pid} was exec'd");
        }
        drop(pool);
        assert!(stop_fork_server());
        // Another test's pool may have started a new one since.
        assert_ne!(fork_server_pid(), Some(zygote));
    }
}
