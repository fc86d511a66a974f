//! The server's side of a Python worker process (`WorkerHandle`, one supervisor thread per worker). The worker's
//! side, the loop `python -m rustserve.worker` runs, is `python::worker_loop`.
//!
//! A supervisor thread spawns `<sys.executable> -m rustserve.worker` (spawn + exec, never a bare fork of the
//! server), accepts its connection on a Unix socket in a private temp dir (removed as soon as the worker is
//! connected), hands it the two shared-memory regions and the functions to serve (`ipc::Frame::Setup`), and then
//! feeds it the calls the dispatcher gives this executor, one at a time, answering the worker's `Model.call`
//! requests on the model batchers in between. The same thread watches the worker: while idle it polls the
//! socket, so a worker that dies is seen at once (EOF, then `waitpid` for how it died); a call in flight fails
//! with "Servable stopped: ..." naming the pid and the cause; the worker is restarted with exponential backoff
//! (0.1 s doubling to 10 s, reset after 10 s of uptime) while the GIL thread and the other workers carry on.
//! On stop the worker gets SIGTERM, then SIGKILL after 5 s. Workers also die with the server: PR_SET_PDEATHSIG
//! fires when the supervisor thread (the spawning thread) ends, and an idle worker sees EOF on its socket.

use super::ipc::{self, CallFrame, Frame, FunctionEntry, Shm, ShmReader, ShmWriter, Wake};
use crate::dispatch::{STOPPED, SlotControl, StageExecutor, Ticket};
use crate::error::ServeError;
use crate::pipeline::ModelSet;
use rustix::process::{Pid, Signal, kill_process};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a new worker may take to import servable_config.py, connect and answer the setup.
const START_TIMEOUT: Duration = Duration::from_mins(2);
/// How long a stopping worker gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Restart delay after a failure; doubles per consecutive quick failure, up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that served this long before dying resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What one worker process serves and how to start it.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The server's interpreter (`sys.executable`).
    pub python: PathBuf,
    /// The servable directory (parent of the servable's folder) and the servable's name and version.
    pub directory: String,
    pub servable: String,
    pub version: u64,
    /// 1-based number of this worker among the servable version's extra workers (logs only).
    pub number: usize,
    pub functions: Vec<FunctionEntry>,
    /// `rustserve._rustserve.init_logging` level for the worker.
    pub log_level: String,
    /// `init_logging` format for the worker: "text" or "json".
    pub log_format: &'static str,
}

impl WorkerConfig {
    fn label(&self) -> String {
        format!(
            "Python worker {} of servable '{}' version {}",
            self.number, self.servable, self.version
        )
    }
}

struct Shared {
    config: WorkerConfig,
    /// The call the dispatcher gave this executor, until the supervisor takes it.
    mailbox: Mutex<Option<Ticket>>,
    wake: Wake,
    stopping: AtomicBool,
    pid: AtomicU32,
    /// Why the dispatcher had the worker killed (`StageExecutor::abort`), for the error text and the log.
    aborted: Mutex<Option<String>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn take_mail(&self) -> Option<Ticket> {
        self.mailbox.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Sleeps up to `delay`; returns early when stopping.
    fn sleep(&self, delay: Duration) {
        let deadline = Instant::now() + delay;
        while !self.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.wake.clear();
            if self.stopping() {
                break;
            }
            let _ = ipc::wait_readable(&[self.wake.fd()], millis(left));
        }
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1)
}

/// One extra Python executor: a supervised worker process.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WorkerHandle {
    pub fn new(config: WorkerConfig) -> io::Result<Arc<WorkerHandle>> {
        Ok(Arc::new(WorkerHandle {
            shared: Arc::new(Shared {
                config,
                mailbox: Mutex::new(None),
                wake: Wake::new()?,
                stopping: AtomicBool::new(false),
                pid: AtomicU32::new(0),
                aborted: Mutex::new(None),
            }),
            thread: Mutex::new(None),
        }))
    }

    /// Starts the supervisor thread. The receiver gets the first start's outcome: the worker's pid, or why it
    /// could not start (the supervisor then ends; later failures are restarted instead).
    pub fn start(&self, control: SlotControl) -> io::Result<mpsc::Receiver<Result<u32, String>>> {
        let (tx, rx) = mpsc::channel();
        let shared = self.shared.clone();
        let name = format!("rustserve-worker-{}", self.shared.config.number);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || supervise(&shared, &control, tx))?;
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(rx)
    }

    /// The running worker's pid, if one is up.
    pub fn version(&self) -> u64 {
        self.shared.config.version
    }

    pub fn pid(&self) -> Option<u32> {
        Some(self.shared.pid.load(Ordering::Acquire)).filter(|&pid| pid != 0)
    }

    /// Asks the supervisor to stop its worker (SIGTERM, SIGKILL after a grace period); see `join`.
    pub fn begin_stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.raise();
    }

    /// Whether `begin_stop` was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping()
    }

    /// Waits until the worker process is gone. Call with the GIL released.
    pub fn join(&self) {
        self.begin_stop();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl StageExecutor for WorkerHandle {
    /// Kills the worker process (SIGKILL: a stage stuck in C code ignores anything gentler); the supervisor then
    /// fails the call with `why` and restarts the worker.
    fn abort(&self, why: &str) -> bool {
        let Some(pid) = self.pid() else { return false };
        *self.shared.aborted.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_owned());
        // `pid` is our own child, reaped only by the supervisor after it ends, so it cannot name another process.
        signal_child(pid, Signal::KILL)
    }

    fn start(&self, ticket: Ticket) -> Result<(), Ticket> {
        if self.shared.stopping() {
            return Err(ticket);
        }
        let mut mailbox = self.shared.mailbox.lock().unwrap_or_else(PoisonError::into_inner);
        if mailbox.is_some() {
            return Err(ticket); // one call at a time; the dispatcher never does this
        }
        *mailbox = Some(ticket);
        drop(mailbox);
        self.shared.wake.raise();
        Ok(())
    }
}

fn supervise(shared: &Shared, control: &SlotControl, first: mpsc::Sender<Result<u32, String>>) {
    let label = shared.config.label();
    let mut first = Some(first);
    let mut failures = 0u32;
    while !shared.stopping() {
        let began = Instant::now();
        match Process::spawn(shared) {
            Ok(mut process) => {
                shared.pid.store(process.pid, Ordering::Release);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(process.pid));
                } else {
                    tracing::warn!("{label}: restarted as process {}", process.pid);
                }
                control.set_up();
                let ended = process.serve(shared);
                shared.pid.store(0, Ordering::Release);
                control.set_down();
                // A call handed over between the death and `set_down` goes back to the queue, unrun.
                if let Some(ticket) = shared.take_mail() {
                    ticket.requeue();
                }
                match ended {
                    Ended::Stopping => {
                        process.terminate();
                        break;
                    }
                    Ended::Died(how) => {
                        let why = shared.aborted.lock().unwrap_or_else(PoisonError::into_inner).take();
                        let why = why.map(|why| format!(" ({why})")).unwrap_or_default();
                        tracing::error!("{label}: process {} {how}{why}; restarting it", process.pid);
                    }
                }
                if began.elapsed() >= STABLE_AFTER {
                    failures = 0;
                }
            }
            Err(err) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(err));
                    return;
                }
                if !shared.stopping() {
                    tracing::error!("{label}: restart failed: {err}");
                }
            }
        }
        let delay = BACKOFF_MIN.saturating_mul(1 << failures.min(10)).min(BACKOFF_MAX);
        failures = failures.saturating_add(1);
        shared.sleep(delay);
    }
    if let Some(tx) = first.take() {
        let _ = tx.send(Err("the server is stopping".into()));
    }
    if let Some(ticket) = shared.take_mail() {
        ticket.fail(&ServeError::Unavailable(STOPPED.into()));
    }
}

enum Ended {
    Stopping,
    /// How the process ended ("was killed by signal 9 (SIGKILL)").
    Died(String),
}

enum Flow {
    Next,
    End(Ended),
}

/// Sends `signal` to the child process `pid`; false when it is gone.
fn signal_child(pid: u32, signal: Signal) -> bool {
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw);
    pid.is_some_and(|pid| kill_process(pid, signal).is_ok())
}

/// `status` in words, for logs and error texts.
fn describe(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => "SIGKILL",
            libc::SIGTERM => "SIGTERM",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGFPE => "SIGFPE",
            libc::SIGILL => "SIGILL",
            libc::SIGINT => "SIGINT",
            libc::SIGHUP => "SIGHUP",
            libc::SIGQUIT => "SIGQUIT",
            _ => "signal",
        };
        format!("was killed by signal {signal} ({name})")
    } else if let Some(code) = status.code() {
        format!("exited with code {code}")
    } else {
        status.to_string()
    }
}

/// A directory only this user can enter, for the worker's socket; removed (with the socket) on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> io::Result<PrivateDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut base = std::env::temp_dir();
        // sun_path holds 108 bytes: fall back to /tmp when TMPDIR is deep.
        if base.as_os_str().len() > 60 {
            base = PathBuf::from("/tmp");
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("rustserve-{}-{nanos:x}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One live worker process and its connection.
struct Process {
    child: Child,
    pid: u32,
    stream: UnixStream,
    to_worker: ShmWriter,
    from_worker: ShmReader,
}

impl Process {
    fn spawn(shared: &Shared) -> Result<Process, String> {
        let config = &shared.config;
        let io_error = |what: &str, e: io::Error| format!("{}: {what}: {e}", config.label());
        let dir = PrivateDir::new().map_err(|e| io_error("cannot create its socket directory", e))?;
        let path = dir.0.join("worker.sock");
        let listener = UnixListener::bind(&path).map_err(|e| io_error("cannot listen on its socket", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_error("cannot listen on its socket", e))?;
        let to_worker = Shm::create("rustserve-to-worker", ipc::INITIAL_REGION)
            .map_err(|e| io_error("cannot create shared memory", e))?;
        let from_worker = Shm::create("rustserve-from-worker", ipc::INITIAL_REGION)
            .map_err(|e| io_error("cannot create shared memory", e))?;
        let mut child = Command::new(&config.python)
            .args(["-m", "rustserve.worker", "--socket"])
            .arg(&path)
            .arg("--directory")
            .arg(&config.directory)
            .args(["--servable", &config.servable, "--version", &config.version.to_string()])
            .args(["--log-level", &config.log_level])
            .args(["--log-format", config.log_format])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| io_error(&format!("cannot run '{}'", config.python.display()), e))?;
        let pid = child.id();
        let connected = Self::connect(shared, &mut child, &listener, &to_worker, &from_worker);
        drop(listener);
        drop(dir);
        match connected {
            Ok(stream) => Ok(Process {
                child,
                pid,
                stream,
                to_worker: ShmWriter::new(to_worker),
                from_worker: ShmReader::new(from_worker),
            }),
            Err(why) => {
                let exited = child.try_wait().ok().flatten();
                if exited.is_none() {
                    let _ = child.kill();
                }
                let status = child.wait().map(describe).unwrap_or_default();
                let how = match exited {
                    Some(_) => format!("; the process {status}"),
                    None => String::new(),
                };
                Err(format!(
                    "{} (process {pid}) failed to start: {why}{how}",
                    config.label()
                ))
            }
        }
    }

    /// Waits (bounded, interruptible) until `fd` is readable; errors if the child exits or the server stops.
    fn wait_for(
        shared: &Shared,
        child: &mut Child,
        fd: BorrowedFd<'_>,
        deadline: Instant,
        what: &str,
    ) -> Result<(), String> {
        loop {
            shared.wake.clear();
            if shared.stopping() {
                return Err("the server is stopping".into());
            }
            let ready = ipc::wait_readable(&[fd, shared.wake.fd()], 200).map_err(|e| e.to_string())?;
            if ready[0] {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "it {} before it {what} (its error is on stderr)",
                    describe(status)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("it did not {what} within {} s", START_TIMEOUT.as_secs()));
            }
        }
    }

    fn connect(
        shared: &Shared,
        child: &mut Child,
        listener: &UnixListener,
        to_worker: &Shm,
        from_worker: &Shm,
    ) -> Result<UnixStream, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("accept failed: {e}")),
            }
            Self::wait_for(shared, child, listener.as_fd(), deadline, "connected")?;
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        let setup = Frame::Setup {
            functions: shared.config.functions.clone(),
        };
        let wire = ipc::encode(&setup, &mut Vec::new()).map_err(|e| e.to_string())?;
        ipc::send_with_fds(&stream, &wire, &[to_worker.fd(), from_worker.fd()])
            .map_err(|e| format!("cannot send the setup: {e}"))?;
        Self::wait_for(shared, child, stream.as_fd(), deadline, "answered the setup")?;
        let body = ipc::read_frame(&stream)
            .map_err(|e| format!("cannot read its answer: {e}"))?
            .ok_or_else(|| "it closed the connection during the setup".to_string())?;
        match ipc::decode(&body, &mut Vec::new()) {
            Ok(Frame::Ready { .. }) => Ok(stream),
            Ok(Frame::SetupFailed { message }) => Err(message),
            Ok(other) => Err(format!("unexpected answer to the setup: {}", other.name())),
            Err(e) => Err(format!("broken answer to the setup: {e}")),
        }
    }

    /// Serves calls until the worker dies or the server stops.
    fn serve(&mut self, shared: &Shared) -> Ended {
        loop {
            shared.wake.clear();
            if shared.stopping() {
                return Ended::Stopping;
            }
            if let Some(ticket) = shared.take_mail() {
                match self.run(shared, ticket) {
                    Flow::Next => continue,
                    Flow::End(ended) => return ended,
                }
            }
            match ipc::wait_readable(&[self.stream.as_fd(), shared.wake.fd()], -1) {
                // Idle, and the socket is readable: the worker died (EOF) or broke the protocol.
                Ok(ready) if ready[0] => {
                    let how = match ipc::read_frame(&self.stream) {
                        Ok(None) => self.reap(),
                        Ok(Some(_)) => format!("sent a frame while idle and {}", self.kill()),
                        Err(e) => format!("broke its connection ({e}) and {}", self.reap()),
                    };
                    return Ended::Died(how);
                }
                Ok(_) => {}
                Err(e) => return Ended::Died(format!("could not be watched ({e}) and {}", self.kill())),
            }
        }
    }

    fn died(&self, shared: &Shared, how: &str, call: &CallMeta) -> ServeError {
        let config = &shared.config;
        let how = match shared.aborted.lock().unwrap_or_else(PoisonError::into_inner).as_deref() {
            Some(why) => format!("{how} ({why})"),
            None => how.to_owned(),
        };
        ServeError::Unavailable(format!(
            "{STOPPED}: the Python worker process {} of servable '{}' version {} {how} while running {} of method \
             '{}'; it is being restarted",
            self.pid, config.servable, config.version, call.tag, call.method
        ))
    }

    /// Runs one call on the worker, answering its `Model.call` requests on the way.
    fn run(&mut self, shared: &Shared, ticket: Ticket) -> Flow {
        let call = ticket.call();
        let meta = CallMeta {
            tag: call.tag.clone(),
            method: call.method.clone(),
            models: call.models.clone(),
        };
        let frame = Frame::Call(CallFrame {
            function: call.function.0 as u64,
            name: call.name.clone(),
            tag: call.tag.clone(),
            method: call.method.clone(),
            stage_index: call.stage_index as u32,
            outputs_count: call.outputs_count as u32,
            batch_size: call.batch_size.map(|b| u32::try_from(b).unwrap_or(u32::MAX)),
            instances: call.instances.clone(),
        });
        let wire = match ipc::encode(&frame, &mut self.to_worker) {
            Ok(wire) => wire,
            Err(e) => {
                ticket.fail(&ServeError::Internal(format!(
                    "cannot pass the call to a worker process: {e}"
                )));
                return Flow::Next;
            }
        };
        drop(frame);
        if ipc::send_all(&self.stream, &wire).is_err() {
            // Gone before it saw the call: the call runs elsewhere.
            ticket.requeue();
            return Flow::End(Ended::Died(self.reap()));
        }
        loop {
            let ready = match ipc::wait_readable(&[self.stream.as_fd(), shared.wake.fd()], -1) {
                Ok(ready) => ready,
                Err(e) => {
                    let how = format!("could not be watched ({e}) and {}", self.kill());
                    ticket.fail_down(&self.died(shared, &how, &meta));
                    return Flow::End(Ended::Died(how));
                }
            };
            if ready[1] {
                shared.wake.clear();
                if shared.stopping() {
                    ticket.fail(&ServeError::Unavailable(STOPPED.into()));
                    return Flow::End(Ended::Stopping);
                }
            }
            if !ready[0] {
                continue;
            }
            let Ok(Some(body)) = ipc::read_frame(&self.stream) else {
                // End of stream or a broken read: the worker is gone.
                let how = self.reap();
                ticket.fail_down(&self.died(shared, &how, &meta));
                return Flow::End(Ended::Died(how));
            };
            match ipc::decode(&body, &mut self.from_worker) {
                Ok(Frame::Results(results)) => {
                    ticket.complete(results);
                    return Flow::Next;
                }
                Ok(Frame::ModelCall {
                    key,
                    subgraph,
                    instances,
                }) => {
                    let subgraph = usize::try_from(subgraph).unwrap_or(usize::MAX);
                    let reply = meta.models.call(&key, subgraph, instances);
                    let sent = ipc::encode(&Frame::ModelReply(reply), &mut self.to_worker)
                        .and_then(|wire| ipc::send_all(&self.stream, &wire));
                    if let Err(e) = sent {
                        tracing::warn!("cannot answer Model.call of worker process {}: {e}", self.pid);
                    }
                }
                other => {
                    let what = match other {
                        Ok(frame) => format!("sent an unexpected {} frame", frame.name()),
                        Err(e) => format!("sent a broken frame ({e})"),
                    };
                    let how = format!("{what} and {}", self.kill());
                    ticket.fail_down(&ServeError::Internal(format!(
                        "the Python worker process {} {how} while running {} of method '{}'",
                        self.pid, meta.tag, meta.method
                    )));
                    return Flow::End(Ended::Died(how));
                }
            }
        }
    }

    /// Reaps a worker whose connection ended; returns how it ended.
    fn reap(&mut self) -> String {
        // EOF arrives while the process exits, a moment before it can be reaped.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return describe(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                _ => return format!("closed its connection, so it {}", self.kill()),
            }
        }
    }

    /// SIGKILLs and reaps the worker; returns how it ended.
    fn kill(&mut self) -> String {
        let _ = self.child.kill();
        self.child
            .wait()
            .map_or_else(|e| format!("could not be reaped: {e}"), describe)
    }

    /// Stops the worker: SIGTERM, then SIGKILL after `STOP_GRACE`.
    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // The pid is our unreaped child, so it cannot have been reused.
        signal_child(self.pid, Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            // Wait for the socket to close (the process exiting) rather than spinning.
            let _ = ipc::wait_readable(&[self.stream.as_fd()], 20);
        }
        tracing::warn!(
            "worker process {} ignored SIGTERM for {STOP_GRACE:?}; killing it",
            self.pid
        );
        self.kill();
    }
}

struct CallMeta {
    tag: String,
    method: String,
    models: Arc<ModelSet>,
}
