//! The dispatcher behind `PythonStages::submit`: it owns every Python stage executor of the server (the GIL thread,
//! which serves the servables that run Python in the server process, plus the worker processes of servables started
//! with `num_parallel_workers` > 1 or `python_in_process=False`, which alone serve their own servable's functions)
//! and one queue of calls waiting for an executor.
//!
//! Each executor runs one call at a time. A call goes to an idle executor that can run it; when none is idle it
//! waits in the queue, and the executor that finishes next takes the oldest call it can run. That is "least busy" with the busy count
//! capped at one, which keeps a slow call from queueing behind another on a busy executor while a second
//! executor idles. Calls of a stage with `batch_size` that wait together are merged into one call of up to
//! `batch_size` instances (0: no limit) when an executor takes them, and the results are split back per request.
//! Nothing waits for a fuller batch: an idle executor takes what is queued at once.
//!
//! Plain Rust (executors are a trait), so the scheduling is unit-tested with fakes.

use crate::error::ServeError;
use crate::log_text::log_text;
use crate::metrics::StuckCall;
use crate::pipeline::{FunctionCall, PythonStages};
use crate::request::InstanceResult;
use crate::service::DEFAULT_REQUEST_TIMEOUT;
use crate::spec::FunctionId;
use futures::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Default bound on Python stage calls waiting for an executor (`Dispatcher::set_max_waiting`).
pub const DEFAULT_MAX_WAITING: usize = 10_000;

/// The text of every call that cannot run because the server or its executor is going away (MindSpore's).
pub const STOPPED: &str = "Servable stopped";

/// Runs Python stage calls, one at a time.
pub trait StageExecutor: Send + Sync {
    /// Starts `ticket`'s call and answers it later through the ticket, from any thread. Hands the ticket back
    /// when the executor can no longer run anything (it is then marked down and the call goes elsewhere).
    fn start(&self, ticket: Ticket) -> Result<(), Ticket>;

    /// Ends the call in progress the hard way (a worker process is killed and restarted, its ticket failed with
    /// `why`); false when this executor cannot be interrupted (the GIL thread).
    fn abort(&self, _why: &str) -> bool {
        false
    }
}

/// How often the watch thread looks for calls running past the call timeout.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// A call an executor is running, for the watch thread.
struct Running {
    started: Instant,
    function: String,
    method: String,
    /// The watch thread acted on it already (logged it, or aborted its worker).
    overdue: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Idle,
    Busy,
    /// Not running (a worker process starting, restarting or stopped).
    Down,
}

struct Slot {
    executor: Arc<dyn StageExecutor>,
    /// `None`: runs every function (the GIL thread); `Some(pool)`: only the functions routed to `pool`.
    pool: Option<usize>,
    state: SlotState,
    running: Option<Running>,
}

impl Slot {
    fn new(executor: Arc<dyn StageExecutor>, pool: Option<usize>, state: SlotState) -> Slot {
        Slot {
            executor,
            pool,
            state,
            running: None,
        }
    }

    /// Marks the slot idle (or down) after its call; logs the end of a call that was reported stuck.
    fn finish(&mut self, down: bool) {
        if down {
            self.state = SlotState::Down;
        } else if self.state == SlotState::Busy {
            self.state = SlotState::Idle;
        }
        if let Some(running) = self.running.take()
            && running.overdue
            && self.pool.is_none()
        {
            tracing::warn!(
                "the Python stage {} (method '{}') returned on the server's Python thread after {:.1} s",
                log_text(&running.function),
                log_text(&running.method),
                running.started.elapsed().as_secs_f64()
            );
        }
    }
}

struct Waiting {
    call: FunctionCall,
    reply: oneshot::Sender<Vec<InstanceResult>>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    waiting: VecDeque<Waiting>,
    routes: HashMap<FunctionId, usize>,
    pools: usize,
    stopped: bool,
    /// Calls beyond this many waiting are refused at once (back-pressure instead of an ever-growing queue).
    max_waiting: usize,
}

struct Inner {
    state: Mutex<State>,
    /// Calls running longer are overdue: a worker's is aborted, the GIL thread's reported (the request timeout).
    call_timeout_ms: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Start = (Arc<dyn StageExecutor>, Ticket);

impl State {
    /// A function routed to a pool runs only there (its servable's worker processes: user code that crashes or
    /// hangs never takes the server down); every other function runs on the GIL thread.
    fn accepts(&self, slot: usize, call: &FunctionCall) -> bool {
        self.routes.get(&call.function).copied() == self.slots[slot].pool
    }

    /// Takes the oldest waiting call `slot` can run, merged with the later waiting calls of the same batch stage.
    fn take_for(&mut self, slot: usize) -> Option<(Waiting, Vec<Waiting>)> {
        // Requests whose client went away (reply receiver dropped) are not run at all.
        self.waiting.retain(|w| !w.reply.is_closed());
        let first = (0..self.waiting.len()).find(|&i| self.accepts(slot, &self.waiting[i].call))?;
        let head = self.waiting.remove(first)?;
        let Some(batch_size) = head.call.batch_size else {
            return Some((head, Vec::new()));
        };
        let limit = if batch_size == 0 { usize::MAX } else { batch_size };
        let mut total = head.call.instances.len();
        let function = head.call.function;
        let mut taken = Vec::new();
        let mut i = first;
        while i < self.waiting.len() {
            if self.waiting[i].call.function != function {
                i += 1;
                continue;
            }
            let count = self.waiting[i].call.instances.len();
            if total + count > limit {
                break; // keep arrival order: a later, smaller call does not overtake this one
            }
            total += count;
            taken.extend(self.waiting.remove(i));
        }
        Some((head, taken))
    }

    /// Gives waiting calls to idle slots, in slot order (the GIL thread first).
    fn dispatch(&mut self, inner: &Arc<Inner>) -> Vec<Start> {
        let mut starts = Vec::new();
        if self.stopped {
            return starts;
        }
        for slot in 0..self.slots.len() {
            if self.waiting.is_empty() {
                break;
            }
            if self.slots[slot].state != SlotState::Idle {
                continue;
            }
            if let Some((head, rest)) = self.take_for(slot) {
                self.slots[slot].state = SlotState::Busy;
                self.slots[slot].running = Some(Running {
                    started: Instant::now(),
                    function: head.call.name.clone(),
                    method: head.call.method.clone(),
                    overdue: false,
                });
                starts.push((
                    self.slots[slot].executor.clone(),
                    Ticket::new(inner.clone(), slot, head, rest),
                ));
            }
        }
        starts
    }
}

/// Starts tickets outside the lock; a ticket an executor refuses goes back to the queue (its slot marked down).
fn run_starts(starts: Vec<Start>) {
    for (executor, ticket) in starts {
        if let Err(ticket) = executor.start(ticket) {
            ticket.requeue();
        }
    }
}

/// One (possibly merged) call handed to an executor. Answer it with `complete`, `fail` or `fail_down`; a ticket
/// dropped unanswered answers "Servable stopped" and frees its executor, so no request ever hangs.
pub struct Ticket {
    inner: Arc<Inner>,
    slot: usize,
    /// Boxed: tickets travel through channels and back from executors, so they stay small.
    call: Box<FunctionCall>,
    /// Per merged request: its instance count and where its results go.
    replies: Vec<(usize, oneshot::Sender<Vec<InstanceResult>>)>,
    answered: bool,
}

impl Ticket {
    fn new(inner: Arc<Inner>, slot: usize, head: Waiting, rest: Vec<Waiting>) -> Ticket {
        let mut call = head.call;
        let mut replies = Vec::with_capacity(rest.len() + 1);
        replies.push((call.instances.len(), head.reply));
        for w in rest {
            replies.push((w.call.instances.len(), w.reply));
            call.instances.extend(w.call.instances);
        }
        Ticket {
            inner,
            slot,
            call: Box::new(call),
            replies,
            answered: false,
        }
    }

    /// The call to run (merged calls have all their instances, in request order).
    pub fn call(&self) -> &FunctionCall {
        &self.call
    }

    /// How many requests were merged into this call.
    pub fn requests(&self) -> usize {
        self.replies.len()
    }

    fn answer(&mut self, results: Vec<InstanceResult>) {
        self.answered = true;
        let total: usize = self.replies.iter().map(|(n, _)| n).sum();
        let mut results = if results.len() == total {
            results.into_iter()
        } else {
            let err = ServeError::Internal(format!(
                "stage {} answered {} results for {total} instances",
                self.call.tag,
                results.len()
            ));
            vec![Err(err); total].into_iter()
        };
        for (n, reply) in self.replies.drain(..) {
            let _ = reply.send(results.by_ref().take(n).collect());
        }
    }

    fn release(&mut self, down: bool) {
        let starts = {
            let mut state = self.inner.lock();
            state.slots[self.slot].finish(down);
            state.dispatch(&self.inner)
        };
        run_starts(starts);
    }

    /// Answers with one result per instance and lets the executor take the next call.
    pub fn complete(mut self, results: Vec<InstanceResult>) {
        self.answer(results);
        self.release(false);
    }

    /// Answers every instance with `err` and lets the executor take the next call.
    pub fn fail(mut self, err: &ServeError) {
        let total = self.call.instances.len();
        self.answer(vec![Err(err.clone()); total]);
        self.release(false);
    }

    /// Answers every instance with `err` and marks the executor down (it died; it comes back with `SlotControl`).
    pub fn fail_down(mut self, err: &ServeError) {
        let total = self.call.instances.len();
        self.answer(vec![Err(err.clone()); total]);
        self.release(true);
    }

    /// Puts the calls back at the head of the queue, unrun, marks the executor down, and dispatches them again.
    pub fn requeue(mut self) {
        self.answered = true;
        let starts = {
            let mut state = self.inner.lock();
            state.slots[self.slot].finish(true);
            let mut instances = std::mem::take(&mut self.call.instances).into_iter();
            let parts: Vec<Waiting> = self
                .replies
                .drain(..)
                .map(|(n, reply)| Waiting {
                    call: FunctionCall {
                        instances: instances.by_ref().take(n).collect(),
                        ..clone_meta(&self.call)
                    },
                    reply,
                })
                .collect();
            if state.stopped {
                drop(state);
                for part in parts {
                    let n = part.call.instances.len();
                    let _ = part.reply.send(vec![Err(ServeError::Unavailable(STOPPED.into())); n]);
                }
                return;
            }
            for part in parts.into_iter().rev() {
                state.waiting.push_front(part);
            }
            state.dispatch(&self.inner)
        };
        run_starts(starts);
    }
}

fn clone_meta(call: &FunctionCall) -> FunctionCall {
    FunctionCall {
        function: call.function,
        name: call.name.clone(),
        tag: call.tag.clone(),
        method: call.method.clone(),
        stage_index: call.stage_index,
        outputs_count: call.outputs_count,
        batch_size: call.batch_size,
        instances: Vec::new(),
        models: call.models.clone(),
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            let total = self.call.instances.len();
            self.answer(vec![Err(ServeError::Unavailable(STOPPED.into())); total]);
            self.release(false);
        }
    }
}

/// What a worker supervisor uses to tell the dispatcher its executor came up or went down.
#[derive(Clone)]
pub struct SlotControl {
    inner: Weak<Inner>,
    slot: usize,
}

impl SlotControl {
    fn set(&self, up: bool) {
        let Some(inner) = self.inner.upgrade() else { return };
        let starts = {
            let mut state = inner.lock();
            let slot = &mut state.slots[self.slot];
            match (up, slot.state) {
                (true, SlotState::Down) => slot.state = SlotState::Idle,
                (false, _) => slot.state = SlotState::Down,
                _ => {}
            }
            state.dispatch(&inner)
        };
        run_starts(starts);
    }

    /// The executor can take calls (started or restarted).
    pub fn set_up(&self) {
        self.set(true);
    }

    /// The executor cannot take calls (its process died); a call it was running must be answered by its ticket.
    pub fn set_down(&self) {
        self.set(false);
    }
}

/// Sends Python stage calls to executors; see the module docs.
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl Dispatcher {
    /// A dispatcher whose first executor, which runs every function not routed to a pool, is `main` (the GIL
    /// thread). Starts the watch thread, which ends with the dispatcher.
    pub fn new(main: Arc<dyn StageExecutor>) -> Dispatcher {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                max_waiting: DEFAULT_MAX_WAITING,
                ..State::default()
            }),
            call_timeout_ms: AtomicU64::new(duration_ms(DEFAULT_REQUEST_TIMEOUT)),
        });
        inner.lock().slots.push(Slot::new(main, None, SlotState::Idle));
        let watched = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("rustserve-python-watch".into())
            .spawn(move || watch(&watched));
        if let Err(err) = spawned {
            tracing::warn!("cannot start the Python watch thread ({err}): calls past the timeout go unreported");
        }
        Dispatcher { inner }
    }

    /// Sets how long a call may run before it is overdue (the request timeout: its requests have failed by then).
    pub fn set_call_timeout(&self, timeout: Duration) {
        self.inner
            .call_timeout_ms
            .store(duration_ms(timeout), Ordering::Relaxed);
    }

    /// Sets how many calls may wait for an executor; beyond it, calls fail at once with `Overloaded`.
    pub fn set_max_waiting(&self, limit: usize) {
        self.inner.lock().max_waiting = limit.max(1);
    }

    /// A new pool of executors for `functions` (one servable version's Python stages); returns its id.
    pub fn add_pool(&self, functions: &[FunctionId]) -> usize {
        let mut state = self.inner.lock();
        let pool = state.pools;
        state.pools += 1;
        for &function in functions {
            state.routes.insert(function, pool);
        }
        pool
    }

    /// Adds an executor of `pool`, down until its `SlotControl::set_up`.
    pub fn add_executor(&self, pool: usize, executor: Arc<dyn StageExecutor>) -> SlotControl {
        let mut state = self.inner.lock();
        state.slots.push(Slot::new(executor, Some(pool), SlotState::Down));
        SlotControl {
            inner: Arc::downgrade(&self.inner),
            slot: state.slots.len() - 1,
        }
    }

    /// Refuses new calls and answers every waiting one with "Servable stopped"; calls in progress finish.
    pub fn shutdown(&self) {
        let waiting = {
            let mut state = self.inner.lock();
            state.stopped = true;
            for slot in &mut state.slots {
                slot.state = SlotState::Down;
            }
            std::mem::take(&mut state.waiting)
        };
        for w in waiting {
            let n = w.call.instances.len();
            let _ = w.reply.send(vec![Err(ServeError::Unavailable(STOPPED.into())); n]);
        }
    }

    /// (idle, busy, down) executor counts and waiting calls, for tests and logs.
    pub fn snapshot(&self) -> (usize, usize, usize, usize) {
        let state = self.inner.lock();
        let count = |s| state.slots.iter().filter(|slot| slot.state == s).count();
        (
            count(SlotState::Idle),
            count(SlotState::Busy),
            count(SlotState::Down),
            state.waiting.len(),
        )
    }
}

impl Inner {
    fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.load(Ordering::Relaxed))
    }
}

impl State {
    /// The GIL thread's call when it has run past `timeout`.
    fn stuck(&self, timeout: Duration) -> Option<StuckCall> {
        let slot = self.slots.iter().find(|slot| slot.pool.is_none())?;
        let running = slot.running.as_ref()?;
        let running_for = running.started.elapsed();
        (running_for >= timeout).then(|| StuckCall {
            servable: running
                .function
                .split_once('.')
                .map_or(running.function.as_str(), |(servable, _)| servable)
                .to_owned(),
            function: running.function.clone(),
            method: running.method.clone(),
            running_for,
        })
    }

    /// `stuck`, when `call` could only run on the GIL thread.
    fn stuck_for(&self, call: &FunctionCall, timeout: Duration) -> Option<StuckCall> {
        if self.routes.contains_key(&call.function) {
            return None;
        }
        self.stuck(timeout)
    }
}

/// The watch thread: every `WATCH_EVERY`, a worker whose call ran past the call timeout is aborted (killed and
/// restarted: its requests have failed with the timeout already), and a call on the GIL thread that did is logged
/// once (nothing can stop it there; readiness and /metrics report it while it runs).
fn watch(inner: &Weak<Inner>) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let Some(inner) = inner.upgrade() else { return };
        let timeout = inner.call_timeout();
        let mut aborts = Vec::new();
        {
            let mut state = inner.lock();
            if state.stopped {
                return;
            }
            for slot in &mut state.slots {
                let Some(running) = slot.running.as_mut() else { continue };
                if running.overdue || running.started.elapsed() < timeout {
                    continue;
                }
                running.overdue = true;
                let what = format!(
                    "{} (method '{}') ran past the call timeout of {:.1} s",
                    log_text(&running.function),
                    log_text(&running.method),
                    timeout.as_secs_f64()
                );
                if slot.pool.is_some() {
                    aborts.push((slot.executor.clone(), what));
                } else {
                    tracing::error!(
                        "the Python stage {what} on the server's Python thread, where it cannot be stopped: it \
                         has been running since {:.1} s ago; the server reports not ready until it returns",
                        running.started.elapsed().as_secs_f64()
                    );
                }
            }
        }
        for (executor, what) in aborts {
            executor.abort(&format!("its call {what}"));
        }
    }
}

impl PythonStages for Dispatcher {
    fn submit(&self, call: FunctionCall) -> BoxFuture<'static, Vec<InstanceResult>> {
        let count = call.instances.len();
        let timeout = self.inner.call_timeout();
        let (reply, answer) = oneshot::channel();
        let starts = {
            let mut state = self.inner.lock();
            if state.stopped {
                Err(ServeError::Unavailable(STOPPED.into()))
            } else if let Some(stuck) = state.stuck_for(&call, timeout) {
                // Only the GIL thread could run it, and it will not come back in time: fail now, not at the timeout.
                Err(ServeError::Unavailable(format!("Serving Error: {}", stuck.describe())))
            } else {
                if state.waiting.len() >= state.max_waiting {
                    // Calls whose client went away do not count against the bound.
                    state.waiting.retain(|w| !w.reply.is_closed());
                }
                if state.waiting.len() >= state.max_waiting {
                    Err(ServeError::Overloaded(format!(
                        "Serving Error: the Python stage queue is full ({} calls waiting, limit {}), {}; retry later",
                        state.waiting.len(),
                        state.max_waiting,
                        call.name
                    )))
                } else {
                    state.waiting.push_back(Waiting { call, reply });
                    Ok(state.dispatch(&self.inner))
                }
            }
        };
        let refused = match starts {
            Ok(starts) => {
                run_starts(starts);
                None
            }
            Err(err) => Some(err),
        };
        Box::pin(async move {
            if let Some(err) = refused {
                return vec![Err(err); count];
            }
            // A dropped reply is an error for every instance, never a hang.
            answer
                .await
                .unwrap_or_else(|_| vec![Err(ServeError::Unavailable(STOPPED.into())); count])
        })
    }

    fn stuck(&self) -> Option<StuckCall> {
        self.inner.lock().stuck(self.inner.call_timeout())
    }
}

fn duration_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ModelSet;
    use crate::tensor::Tensor;
    use std::sync::mpsc;
    use std::time::Duration;

    /// An executor that parks tickets until the test answers them.
    struct Fake {
        name: &'static str,
        tickets: Mutex<mpsc::Sender<(&'static str, Ticket)>>,
        refuse: std::sync::atomic::AtomicBool,
        aborted: Mutex<Vec<String>>,
    }

    impl StageExecutor for Fake {
        fn abort(&self, why: &str) -> bool {
            self.aborted.lock().unwrap().push(why.to_owned());
            self.name != "gil"
        }

        fn start(&self, ticket: Ticket) -> Result<(), Ticket> {
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ticket);
            }
            self.tickets.lock().unwrap().send((self.name, ticket)).unwrap();
            Ok(())
        }
    }

    struct Rig {
        dispatcher: Arc<Dispatcher>,
        started: mpsc::Receiver<(&'static str, Ticket)>,
        fakes: Vec<Arc<Fake>>,
        controls: Vec<SlotControl>,
    }

    fn fake(name: &'static str, tx: &mpsc::Sender<(&'static str, Ticket)>) -> Arc<Fake> {
        Arc::new(Fake {
            name,
            tickets: Mutex::new(tx.clone()),
            refuse: std::sync::atomic::AtomicBool::new(false),
            aborted: Mutex::default(),
        })
    }

    /// The GIL fake plus, when `workers` > 0, that many worker fakes in one pool that alone serves functions 0 and 1
    /// (function 2 is always the GIL thread's; without workers, so are 0 and 1).
    fn rig(workers: usize) -> Rig {
        let (tx, started) = mpsc::channel();
        let gil = fake("gil", &tx);
        let dispatcher = Arc::new(Dispatcher::new(gil.clone()));
        let pool = (workers > 0).then(|| dispatcher.add_pool(&[FunctionId(0), FunctionId(1)]));
        let mut fakes = vec![gil];
        let mut controls = Vec::new();
        for name in ["w1", "w2", "w3"].into_iter().take(workers) {
            let w = fake(name, &tx);
            controls.push(dispatcher.add_executor(pool.unwrap_or_default(), w.clone()));
            fakes.push(w);
        }
        for c in &controls {
            c.set_up();
        }
        Rig {
            dispatcher,
            started,
            fakes,
            controls,
        }
    }

    fn call(function: usize, batch_size: Option<usize>, values: &[i64]) -> FunctionCall {
        FunctionCall {
            function: FunctionId(function),
            name: format!("svc.f{function}"),
            tag: format!("Function 'svc.f{function}'"),
            method: "m".into(),
            stage_index: 1,
            outputs_count: 1,
            batch_size,
            instances: values
                .iter()
                .map(|&v| vec![Tensor::from_values(vec![], &[v]).unwrap()])
                .collect(),
            models: Arc::new(ModelSet::default()),
        }
    }

    fn values(call: &FunctionCall) -> Vec<i64> {
        call.instances
            .iter()
            .map(|i| i[0].to_values::<i64>().unwrap()[0])
            .collect()
    }

    /// Echoes every instance, plus 1000 * the number of merged requests.
    fn echo(ticket: Ticket) {
        let bump = 1000 * ticket.requests() as i64;
        let results = values(ticket.call())
            .into_iter()
            .map(|v| Ok(vec![Tensor::from_values(vec![], &[v + bump]).unwrap()]))
            .collect();
        ticket.complete(results);
    }

    fn got(results: &[InstanceResult]) -> Vec<i64> {
        results
            .iter()
            .map(|r| r.as_ref().unwrap()[0].to_values::<i64>().unwrap()[0])
            .collect()
    }

    fn next(rig: &Rig) -> (&'static str, Ticket) {
        rig.started
            .recv_timeout(Duration::from_secs(5))
            .expect("a ticket was started")
    }

    fn nothing_started(rig: &Rig) {
        assert!(rig.started.try_recv().is_err(), "no ticket should have started");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_abandoned_calls_free_their_place() {
        let rig = rig(0);
        rig.dispatcher.set_max_waiting(2);
        let running = rig.dispatcher.submit(call(2, None, &[1]));
        let (_, t1) = next(&rig);
        let queued = rig.dispatcher.submit(call(2, None, &[2]));
        let abandoned = rig.dispatcher.submit(call(2, None, &[3]));
        // Two calls wait: the next one is refused without waiting, naming the limit.
        let refused = rig.dispatcher.submit(call(2, None, &[4])).await;
        let err = refused[0].as_ref().unwrap_err();
        assert!(matches!(err, ServeError::Overloaded(_)), "{err:?}");
        assert!(err.message().contains("limit 2"), "{}", err.message());
        // A client that goes away frees its place for the next call.
        drop(abandoned);
        let accepted = rig.dispatcher.submit(call(2, None, &[5]));
        echo(t1);
        let (_, t2) = next(&rig);
        assert_eq!(values(t2.call()), vec![2]);
        echo(t2);
        let (_, t5) = next(&rig);
        assert_eq!(values(t5.call()), vec![5]);
        echo(t5);
        assert_eq!(got(&running.await), vec![1001]);
        assert_eq!(got(&queued.await), vec![1002]);
        assert_eq!(got(&accepted.await), vec![1005]);
        nothing_started(&rig);
    }

    #[tokio::test]
    async fn pool_functions_go_to_idle_workers_only_then_queue() {
        let rig = rig(2);
        let a = rig.dispatcher.submit(call(0, None, &[1]));
        let (who, ta) = next(&rig);
        assert_eq!((who, values(ta.call())), ("w1", vec![1]));
        let b = rig.dispatcher.submit(call(0, None, &[2]));
        let (who, tb) = next(&rig);
        assert_eq!(who, "w2");
        // Both workers are busy: the call waits although the GIL thread is idle (it never runs pool functions).
        let c = rig.dispatcher.submit(call(0, None, &[3]));
        nothing_started(&rig);
        assert_eq!(rig.dispatcher.snapshot(), (1, 2, 0, 1));
        // The worker that finishes first takes the waiting call.
        echo(tb);
        let (who, tc) = next(&rig);
        assert_eq!((who, values(tc.call())), ("w2", vec![3]));
        echo(ta);
        echo(tc);
        assert_eq!(got(&a.await), vec![1001]);
        assert_eq!(got(&b.await), vec![1002]);
        assert_eq!(got(&c.await), vec![1003]);
        assert_eq!(rig.dispatcher.snapshot(), (3, 0, 0, 0));
    }

    #[tokio::test]
    async fn workers_and_the_gil_thread_each_take_only_their_functions() {
        let rig = rig(1);
        let a = rig.dispatcher.submit(call(2, None, &[1]));
        let (who, ta) = next(&rig);
        assert_eq!(who, "gil");
        // Function 2 is not routed to the worker's pool: it waits for the GIL thread although w1 is idle.
        let b = rig.dispatcher.submit(call(2, None, &[2]));
        nothing_started(&rig);
        let c = rig.dispatcher.submit(call(1, None, &[3]));
        let (who, tc) = next(&rig);
        assert_eq!((who, values(tc.call())), ("w1", vec![3]));
        echo(ta);
        let (who, tb) = next(&rig);
        assert_eq!(who, "gil");
        // And function 1 waits for its worker although the GIL thread is idle again.
        echo(tb);
        let d = rig.dispatcher.submit(call(1, None, &[4]));
        nothing_started(&rig);
        echo(tc);
        let (who, td) = next(&rig);
        assert_eq!(who, "w1");
        echo(td);
        assert_eq!(got(&a.await), vec![1001]);
        assert_eq!(got(&b.await), vec![1002]);
        assert_eq!(got(&c.await), vec![1003]);
        assert_eq!(got(&d.await), vec![1004]);
    }

    #[tokio::test]
    async fn batch_stage_calls_merge_while_waiting_up_to_batch_size() {
        let rig = rig(0);
        let first = rig.dispatcher.submit(call(0, Some(4), &[1]));
        let (_, t1) = next(&rig);
        // While the only executor is busy, five requests queue: 2 + 1 + 1 instances merge (4), 3 must wait.
        let r2 = rig.dispatcher.submit(call(0, Some(4), &[2, 3]));
        let other = rig.dispatcher.submit(call(1, Some(4), &[9]));
        let r3 = rig.dispatcher.submit(call(0, Some(4), &[4]));
        let r4 = rig.dispatcher.submit(call(0, Some(4), &[5]));
        let r5 = rig.dispatcher.submit(call(0, Some(4), &[6, 7, 8]));
        echo(t1);
        let (_, t2) = next(&rig);
        assert_eq!((t2.requests(), values(t2.call())), (3, vec![2, 3, 4, 5]));
        echo(t2);
        let (_, t3) = next(&rig);
        assert_eq!(values(t3.call()), vec![9]);
        echo(t3);
        let (_, t4) = next(&rig);
        assert_eq!(values(t4.call()), vec![6, 7, 8]);
        echo(t4);
        assert_eq!(got(&first.await), vec![1001]);
        assert_eq!(got(&r2.await), vec![3002, 3003]);
        assert_eq!(got(&r3.await), vec![3004]);
        assert_eq!(got(&r4.await), vec![3005]);
        assert_eq!(got(&r5.await), vec![1006, 1007, 1008]);
        assert_eq!(got(&other.await), vec![1009]);
    }

    #[tokio::test]
    async fn unlimited_batch_and_per_instance_stages() {
        let rig = rig(0);
        let first = rig.dispatcher.submit(call(0, Some(0), &[1]));
        let (_, t1) = next(&rig);
        let batched: Vec<_> = (0..5)
            .map(|v| rig.dispatcher.submit(call(0, Some(0), &[10 + v])))
            .collect();
        let single: Vec<_> = (0..2)
            .map(|v| rig.dispatcher.submit(call(1, None, &[20 + v])))
            .collect();
        echo(t1);
        let (_, t2) = next(&rig);
        assert_eq!(t2.requests(), 5, "batch_size 0 takes every waiting call of the stage");
        echo(t2);
        // Per-instance stages are never merged.
        for _ in 0..2 {
            let (_, t) = next(&rig);
            assert_eq!(t.requests(), 1);
            echo(t);
        }
        assert_eq!(got(&first.await), vec![1001]);
        for (v, r) in batched.into_iter().enumerate() {
            assert_eq!(got(&r.await), vec![5010 + v as i64]);
        }
        for (v, r) in single.into_iter().enumerate() {
            assert_eq!(got(&r.await), vec![1020 + v as i64]);
        }
    }

    #[tokio::test]
    async fn abandoned_requests_are_skipped() {
        let rig = rig(0);
        let first = rig.dispatcher.submit(call(0, Some(4), &[1]));
        let (_, t1) = next(&rig);
        drop(rig.dispatcher.submit(call(0, Some(4), &[2])));
        let kept = rig.dispatcher.submit(call(0, Some(4), &[3]));
        echo(t1);
        let (_, t2) = next(&rig);
        assert_eq!(values(t2.call()), vec![3]);
        echo(t2);
        assert_eq!(got(&first.await), vec![1001]);
        assert_eq!(got(&kept.await), vec![1003]);
    }

    #[tokio::test]
    async fn a_dead_worker_fails_its_call_and_the_rest_go_elsewhere() {
        let rig = rig(2);
        let a = rig.dispatcher.submit(call(0, None, &[1]));
        let (_, ta) = next(&rig);
        let b = rig.dispatcher.submit(call(0, None, &[2]));
        let (who, tb) = next(&rig);
        assert_eq!(who, "w2");
        let c = rig.dispatcher.submit(call(0, None, &[3]));
        tb.fail_down(&ServeError::Unavailable("Servable stopped: worker 7 was killed".into()));
        assert_eq!(rig.dispatcher.snapshot(), (1, 1, 1, 1));
        echo(ta);
        let (who, tc) = next(&rig);
        assert_eq!(who, "w1");
        echo(tc);
        let b = b.await;
        assert!(
            matches!(&b[0], Err(ServeError::Unavailable(t)) if t.contains("killed")),
            "{b:?}"
        );
        assert_eq!(got(&a.await), vec![1001]);
        assert_eq!(got(&c.await), vec![1003]);
        // Back up after a restart: it takes calls again.
        rig.controls[1].set_up();
        let _busy = rig.dispatcher.submit(call(0, None, &[4]));
        let (who, t4) = next(&rig);
        assert_eq!(who, "w1");
        let e = rig.dispatcher.submit(call(0, None, &[5]));
        let (who, t5) = next(&rig);
        assert_eq!(who, "w2");
        echo(t5);
        echo(t4);
        assert_eq!(got(&e.await), vec![1005]);
    }

    #[tokio::test]
    async fn refused_and_dropped_tickets_never_hang() {
        let rig = rig(2);
        rig.fakes[2].refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let a = rig.dispatcher.submit(call(0, None, &[1]));
        let (_, ta) = next(&rig);
        // w2 refuses: the call is requeued, w2 is marked down, and w1 runs it next.
        let b = rig.dispatcher.submit(call(0, None, &[2]));
        nothing_started(&rig);
        assert_eq!(rig.dispatcher.snapshot(), (1, 1, 1, 1));
        drop(ta); // dropped unanswered: "Servable stopped", and the executor moves on
        let a = a.await;
        assert!(
            matches!(&a[0], Err(ServeError::Unavailable(t)) if t == STOPPED),
            "{a:?}"
        );
        let (who, tb) = next(&rig);
        assert_eq!(who, "w1");
        tb.complete(vec![]); // wrong result count: an error per instance, not a panic
        let b = b.await;
        assert!(
            matches!(&b[0], Err(ServeError::Internal(t)) if t.contains("answered 0 results")),
            "{b:?}"
        );
    }

    #[tokio::test]
    async fn overdue_calls_abort_their_worker_and_a_stuck_gil_thread_is_reported() {
        let rig = rig(1);
        rig.dispatcher.set_call_timeout(Duration::from_millis(100));
        let on_gil = rig.dispatcher.submit(call(2, None, &[1]));
        let (_, t_gil) = next(&rig);
        let on_worker = rig.dispatcher.submit(call(0, None, &[2]));
        let (who, t_worker) = next(&rig);
        assert_eq!(who, "w1");
        assert!(rig.dispatcher.stuck().is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        while rig.fakes[1].aborted.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The worker's call is aborted once; the GIL thread is never asked (it cannot be), only reported.
        let aborted = rig.fakes[1].aborted.lock().unwrap().clone();
        assert_eq!(
            aborted,
            vec!["its call svc.f0 (method 'm') ran past the call timeout of 0.1 s".to_owned()]
        );
        assert!(rig.fakes[0].aborted.lock().unwrap().is_empty());
        let stuck = rig.dispatcher.stuck().expect("the GIL call is stuck");
        assert_eq!((stuck.servable.as_str(), stuck.function.as_str()), ("svc", "svc.f2"));
        // A new call for the GIL thread fails at once; one for the pool still queues.
        let refused = rig.dispatcher.submit(call(2, None, &[3])).await;
        assert!(
            matches!(&refused[0], Err(ServeError::Unavailable(t)) if t.contains("has been running svc.f2")),
            "{refused:?}"
        );
        let queued = rig.dispatcher.submit(call(1, None, &[4]));
        t_worker.fail_down(&ServeError::Unavailable("killed".into()));
        echo(t_gil);
        assert!(rig.dispatcher.stuck().is_none());
        assert_eq!(got(&on_gil.await), vec![1001]);
        assert!(on_worker.await[0].is_err());
        rig.controls[0].set_up();
        let (_, t4) = next(&rig);
        echo(t4);
        assert_eq!(got(&queued.await), vec![1004]);
    }

    #[tokio::test]
    async fn shutdown_answers_waiting_calls_and_refuses_new_ones() {
        let rig = rig(0);
        let a = rig.dispatcher.submit(call(0, None, &[1]));
        let (_, ta) = next(&rig);
        let b = rig.dispatcher.submit(call(0, None, &[2, 3]));
        rig.dispatcher.shutdown();
        let b = b.await;
        assert_eq!(b.len(), 2);
        assert!(
            b.iter()
                .all(|r| matches!(r, Err(ServeError::Unavailable(t)) if t == STOPPED))
        );
        let c = rig.dispatcher.submit(call(0, None, &[4])).await;
        assert!(matches!(&c[0], Err(ServeError::Unavailable(_))));
        // The call in progress still gets its answer.
        echo(ta);
        assert_eq!(got(&a.await), vec![1001]);
        nothing_started(&rig);
    }
}
