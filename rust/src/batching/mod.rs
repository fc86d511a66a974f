//! Per-model batching with MindSpore semantics: each instance is checked (byte size, dtype) before it is queued,
//! then the model's batch thread(s) take what is queued (FIFO, across callers, up to the batch size), stack and pad
//! it, run the model once and answer every caller through a oneshot.
//!
//! Scheduling knobs (`BatchConfig`): `max_queue_delay` (default zero: run what is queued, never wait when idle),
//! preferred batch sizes for a symbolic batch dimension, and one runner per device: every runner has its own
//! thread, and all of them take batches from the model's one queue, so whichever device is idle gets the next batch.

mod plan;
mod policy;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use self::plan::{BatchMode, BatchPlan, CheckedInstance, DEFAULT_MAX_BATCH_SIZE};
use self::policy::Decision;
use crate::error::ServeError;
use crate::log_text::log_text;
use crate::tensor::{DType, Tensor};

/// How a model is batched (MindSpore's `declare_model(with_batch_dim=..., without_batch_dim_inputs=...)`, plus
/// rustserve's scheduling knobs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Dim 0 of the model's inputs and outputs is the batch dimension.
    pub with_batch_dim: bool,
    /// Input indices that are passed whole, once per batch, taken from the batch's first instance.
    pub without_batch_dim_inputs: Vec<usize>,
    /// Rows per run for a symbolic batch dimension (`None`: `DEFAULT_MAX_BATCH_SIZE`); ignored for a static one.
    pub max_batch_size: Option<usize>,
    /// Longest an instance waits for others to fill its batch. Zero (the default) runs whatever is queued at once.
    pub max_queue_delay: Duration,
    /// Run sizes to prefer for a symbolic batch dimension (each in `1..=max_batch_size`); empty: no preference.
    pub preferred_batch_sizes: Vec<usize>,
}

impl Default for BatchConfig {
    /// MindSpore's defaults: batch dimension on, every input batched, no delay, no preferred sizes.
    fn default() -> BatchConfig {
        BatchConfig {
            with_batch_dim: true,
            without_batch_dim_inputs: Vec::new(),
            max_batch_size: None,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: Vec::new(),
        }
    }
}

/// One model input or output: name, element type and shape (`-1` for a symbolic or unknown dimension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

/// A model's inputs and outputs, in the model's order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ModelSignature {
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
}

/// What a model's batch thread reports after each run (see `BatchObserver`).
#[derive(Clone, Copy, Debug)]
pub struct BatchRun {
    /// Instances in the batch (without padding rows).
    pub instances: usize,
    /// How long the oldest instance of the batch waited in the queue.
    pub queue_wait: Duration,
    /// The model run itself (stacking, ONNX Runtime, splitting).
    pub run: Duration,
    pub ok: bool,
}

/// The batch a traced request's instances first ran in (see `ModelQueue::infer_all_noted`): set once, by the batch
/// thread that runs the first of them.
#[derive(Debug, Default)]
pub struct BatchNote {
    taken: AtomicBool,
    size: AtomicUsize,
    wait_ns: AtomicU64,
}

impl BatchNote {
    /// Records a batch of `size` instances in which the request's instance waited `wait`; only the first call counts.
    fn note(&self, size: usize, wait: Duration) {
        if !self.taken.swap(true, Ordering::AcqRel) {
            self.size.store(size, Ordering::Relaxed);
            self.wait_ns
                .store(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// (instances in the batch, queue wait of the request's instance), once a batch ran.
    pub fn batch(&self) -> Option<(usize, Duration)> {
        self.taken.load(Ordering::Acquire).then(|| {
            (
                self.size.load(Ordering::Relaxed),
                Duration::from_nanos(self.wait_ns.load(Ordering::Relaxed)),
            )
        })
    }
}

/// Receives one call per batch a model queue runs. Implemented by `metrics::ModelStats`; a batching queue that
/// holds one calls it from its batch thread (cheap: a few atomic adds and histogram locks).
pub trait BatchObserver: Send + Sync {
    fn batch_done(&self, run: &BatchRun);
}

/// Runs one full batch: inputs in model input order, outputs in model output order. `model::OrtRunner` implements
/// it (`servable::loader` loads one per device); tests use fakes. Called only from the runner's own batch thread.
pub trait BatchRunner: Send {
    /// Runs the model once on full-batch tensors.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError>;

    /// Whether a run may happen on the caller's thread (see `ModelQueue::try_inline`); false for a runner that
    /// blocks on a runtime of its own, which must never be entered from a tokio worker.
    fn may_run_inline(&self) -> bool {
        true
    }
}

impl<F> BatchRunner for F
where
    F: FnMut(Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> + Send,
{
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> {
        self(inputs)
    }
}

/// What a caller gets back for one instance: that instance's outputs in model output order.
pub type InstanceResult = Result<Vec<Tensor>, ServeError>;

struct Job {
    inputs: Vec<Tensor>,
    key: Vec<Vec<i64>>,
    reply: oneshot::Sender<InstanceResult>,
    /// Arrival time, for `max_queue_delay` (measured from the oldest instance of a batch).
    queued_at: Instant,
    /// Set only for traced requests: where the batch this instance ran in is noted.
    note: Option<Arc<BatchNote>>,
}

enum Msg {
    Job(Job),
    Stop,
}

/// The queue and batch thread(s) of one model file.
// NOTE: each runner's std thread does both the batching and the ORT run, instead of a tokio task that feeds a
// separate runner thread: it saves a thread hand-off per batch (~10 µs each way on our VMs, toolchain.md), needs
// no tokio runtime (the loader and the Python bridge can build queues from any thread), and `Session::run`
// blocks anyway. Idle threads sleep in `recv()` or on the intake lock, so an idle model costs nothing.
pub struct ModelQueue {
    signature: ModelSignature,
    config: BatchConfig,
    core: Arc<Core>,
    /// The runners, each also held by its batch thread; `infer` may borrow an idle one (see `try_inline`).
    runners: Vec<SharedRunner>,
    tx: mpsc::Sender<Msg>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Model runs whose moving-average duration is at most this may run on the calling thread (see `try_inline`).
// NOTE: measured on the 2-core benchmark VM: handing a [2,2] add to the batch thread and back costs 50-80 µs at
// concurrency 1 (two cross-CPU wake-ups), ten times the run itself; 100 µs of blocking is also what a tokio worker
// spends on one large JSON body, so it cannot starve the worker's other tasks.
const INLINE_MAX_RUN: Duration = Duration::from_micros(100);

/// A runner shared by its batch thread and `ModelQueue::try_inline`; the lock is uncontended in the common case.
type SharedRunner = Arc<Mutex<Box<dyn BatchRunner>>>;

/// What a model queue and all its batch threads share.
struct Core {
    model: String,
    plan: BatchPlan,
    /// Instances queued and not yet taken into a batch.
    depth: AtomicUsize,
    observer: OnceLock<Arc<dyn BatchObserver>>,
    /// Moving average of one run's duration (stack + run + split) in ns; `u64::MAX` before the first run.
    run_ns: AtomicU64,
    /// `shutdown` has begun: nothing new may run.
    stopped: AtomicBool,
    /// No batch dimension and every input of a fixed size, so a run's cost is the same from instance to instance
    /// (see `try_inline`).
    uniform_runs: bool,
}

impl std::fmt::Debug for ModelQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelQueue")
            .field("model", &self.core.model)
            .field("mode", &self.core.plan.mode)
            .field("runners", &self.runners.len())
            .finish_non_exhaustive()
    }
}

impl ModelQueue {
    /// Starts a batch thread for any runner; `model` names the model in errors (normally its file path).
    pub fn new(
        model: &str,
        signature: ModelSignature,
        cfg: BatchConfig,
        runner: Box<dyn BatchRunner>,
    ) -> Result<ModelQueue, ServeError> {
        ModelQueue::with_runners(model, signature, cfg, vec![runner])
    }

    /// Starts one batch thread per runner (e.g. one per device); they share the model's queue, so the next batch
    /// goes to whichever runner is idle. Every runner must run the same model (`signature`).
    pub fn with_runners(
        model: &str,
        signature: ModelSignature,
        cfg: BatchConfig,
        runners: Vec<Box<dyn BatchRunner>>,
    ) -> Result<ModelQueue, ServeError> {
        if runners.is_empty() {
            return Err(ServeError::Config(format!(
                "model file '{model}': at least one runner (device) is needed"
            )));
        }
        let core = Arc::new(Core {
            model: model.to_owned(),
            plan: BatchPlan::new(&signature, &cfg, model)?,
            depth: AtomicUsize::new(0),
            observer: OnceLock::new(),
            run_ns: AtomicU64::new(u64::MAX),
            stopped: AtomicBool::new(false),
            uniform_runs: !cfg.with_batch_dim
                && runners.iter().all(|r| r.may_run_inline())
                && signature.inputs.iter().all(|input| {
                    input.shape.iter().all(|&dim| dim > 0) && !matches!(input.dtype, DType::String | DType::Bytes)
                }),
        });
        let runners: Vec<SharedRunner> = runners.into_iter().map(|r| Arc::new(Mutex::new(r))).collect();
        let (tx, rx) = mpsc::channel();
        let intake = Arc::new(Mutex::new(Intake {
            rx,
            pending: VecDeque::new(),
            stopping: false,
        }));
        let file_name = Path::new(model)
            .file_name()
            .map_or_else(|| model.into(), |n| n.to_string_lossy());
        let count = runners.len();
        let mut threads = Vec::with_capacity(count);
        for (index, runner) in runners.iter().enumerate() {
            let worker = BatchThread {
                core: Arc::clone(&core),
                intake: Arc::clone(&intake),
                runner: Arc::clone(runner),
            };
            let name = if count == 1 {
                format!("rustserve-model-{file_name}")
            } else {
                format!("rustserve-model-{file_name}-{index}")
            };
            match std::thread::Builder::new().name(name).spawn(move || worker.serve()) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    // Stop the threads already started before reporting.
                    let _ = tx.send(Msg::Stop);
                    for handle in threads {
                        let _ = handle.join();
                    }
                    return Err(ServeError::Config(format!(
                        "model file '{model}': cannot start its batch thread: {e}"
                    )));
                }
            }
        }
        Ok(ModelQueue {
            signature,
            config: cfg,
            core,
            runners,
            tx,
            threads: Mutex::new(threads),
        })
    }

    /// Checks one instance (inputs in model input order) and queues it; the receiver yields its outputs.
    ///
    /// Check failures are returned at once as `ServeError::InvalidInput` with MindSpore's texts. Dropping the
    /// receiver cancels the instance if it has not run yet.
    pub fn submit(&self, inputs: Vec<Tensor>) -> Result<oneshot::Receiver<InstanceResult>, ServeError> {
        self.submit_noted(inputs, None)
    }

    /// `submit`, noting the batch the instance runs in into `note` (traced requests).
    fn submit_noted(
        &self,
        inputs: Vec<Tensor>,
        note: Option<&Arc<BatchNote>>,
    ) -> Result<oneshot::Receiver<InstanceResult>, ServeError> {
        let CheckedInstance { inputs, key } = self.core.plan.check_instance(inputs)?;
        let (reply, rx) = oneshot::channel();
        self.core.depth.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            inputs,
            key,
            reply,
            queued_at: Instant::now(),
            note: note.cloned(),
        };
        if self.tx.send(Msg::Job(job)).is_err() {
            self.core.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(self.stopped());
        }
        Ok(rx)
    }

    /// Runs one instance (inputs in model input order) and returns its outputs (model output order), batched with
    /// whatever else is queued for this model. Cancel-safe: dropping the future drops the instance.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> InstanceResult {
        self.infer_noted(inputs, None).await
    }

    async fn infer_noted(&self, inputs: Vec<Tensor>, note: Option<&Arc<BatchNote>>) -> InstanceResult {
        let rx = self.submit_noted(inputs, note)?;
        rx.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Runs the instances of one request (see `infer`), answering in order. A lone instance of a fast model without
    /// a batch dimension may run on the calling thread instead (see `try_inline`); several always go through the
    /// queue, so one large request cannot hold the calling (I/O) thread.
    pub async fn infer_all(&self, instances: Vec<Vec<Tensor>>) -> Vec<InstanceResult> {
        self.infer_all_noted(instances, None).await
    }

    /// `infer_all`, noting in `note` the batch the first of the instances to run ran in (a traced request's model
    /// stage span reports it).
    pub async fn infer_all_noted(
        &self,
        mut instances: Vec<Vec<Tensor>>,
        note: Option<&Arc<BatchNote>>,
    ) -> Vec<InstanceResult> {
        if instances.len() == 1 {
            let inputs = instances.pop().expect("one instance");
            let result = match self.try_inline(inputs) {
                Ok(result) => {
                    if let Some(note) = note {
                        note.note(1, Duration::ZERO);
                    }
                    result
                }
                Err(inputs) => self.infer_noted(inputs, note).await,
            };
            return vec![result];
        }
        // NOTE: every instance is queued first, then the answers are awaited in order: one future for the request.
        // A join of one future per instance spent its time in FuturesUnordered re-waking itself once tokio's
        // cooperative budget ran out (250k instances: 40 s of I/O-thread CPU instead of 2.5 s).
        let queued: Vec<_> = instances
            .into_iter()
            .map(|inputs| self.submit_noted(inputs, note))
            .collect();
        let mut results = Vec::with_capacity(queued.len());
        for instance in queued {
            results.push(match instance {
                Ok(rx) => rx.await.unwrap_or_else(|_| Err(self.stopped())),
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Runs the instance on the calling thread when that loses nothing and saves the two thread hand-offs: the model
    /// has no batch dimension (every run is one instance anyway) and fixed input sizes (one large instance of a
    /// symbolic-shape model must not block an I/O thread), its runs average at most `INLINE_MAX_RUN`, nothing is
    /// queued (no overtaking) and a runner is idle. Otherwise hands `inputs` back for the queue.
    fn try_inline(&self, inputs: Vec<Tensor>) -> Result<InstanceResult, Vec<Tensor>> {
        let core = &self.core;
        let fast = core.run_ns.load(Ordering::Relaxed) <= INLINE_MAX_RUN.as_nanos() as u64;
        if !core.uniform_runs
            || !fast
            || core.depth.load(Ordering::Relaxed) != 0
            || core.stopped.load(Ordering::Relaxed)
        {
            return Err(inputs);
        }
        // A runner busy with a batch (or poisoned, which catch_unwind prevents) is simply not idle.
        let Some(mut runner) = self.runners.iter().find_map(|r| r.try_lock().ok()) else {
            return Err(inputs);
        };
        let checked = match core.plan.check_instance(inputs) {
            Ok(checked) => checked,
            Err(e) => return Ok(Err(e)),
        };
        let (outcome, run) = core.execute(&mut **runner, vec![checked.inputs], Duration::ZERO);
        drop(runner);
        core.observe(&run);
        Ok(outcome.and_then(|per_instance| {
            per_instance
                .into_iter()
                .next()
                .ok_or_else(|| ServeError::Internal(format!("model '{}': a run returned no instance", core.model)))
        }))
    }

    /// Blocking `infer` for plain threads (e.g. the Python thread). Panics if called inside a tokio runtime.
    pub fn infer_blocking(&self, inputs: Vec<Tensor>) -> InstanceResult {
        let rx = self.submit(inputs)?;
        rx.blocking_recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Most instances per run: 1 without a batch dim, `N` for a static dim 0, `max_batch_size` for a symbolic one.
    pub fn batch_size(&self) -> usize {
        self.core.plan.mode.batch_size()
    }

    /// Whole / fixed / dynamic batching, with its size.
    pub fn batch_mode(&self) -> BatchMode {
        self.core.plan.mode
    }

    /// The batching configuration this queue was built with.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// How many runners (sessions, one thread each) take batches from this queue.
    pub fn runners(&self) -> usize {
        self.runners.len()
    }

    /// The model's inputs and outputs (full-batch shapes, as in the file).
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The name used in errors (the model file path for `load`).
    pub fn model(&self) -> &str {
        &self.core.model
    }

    /// Reports every batch this queue runs to `observer` (metrics), from the batch threads. Only the first call
    /// takes effect; returns whether this one did.
    pub fn set_observer(&self, observer: Arc<dyn BatchObserver>) -> bool {
        self.core.observer.set(observer).is_ok()
    }

    /// Instances queued and not yet taken into a batch.
    pub fn queue_depth(&self) -> usize {
        self.core.depth.load(Ordering::Relaxed)
    }

    /// Stops the batch threads after they have run everything queued so far, and waits for them. Later calls to
    /// `infer` fail with `ServeError::Unavailable`. Idempotent; also run on drop, so dropping the last handle
    /// blocks until the queued instances have run (call it from a blocking context when much may be queued).
    pub fn shutdown(&self) {
        self.core.stopped.store(true, Ordering::Relaxed);
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        if handles.is_empty() {
            return;
        }
        // One Stop is enough: the thread that reads it marks the shared intake, and every thread then drains the
        // queue and exits. A send error means the threads are already gone; join reports how they ended.
        let _ = self.tx.send(Msg::Stop);
        for handle in handles {
            if handle.join().is_err() {
                tracing::error!(model = %self.core.model, "model batch thread panicked");
            }
        }
    }

    fn stopped(&self) -> ServeError {
        ServeError::Unavailable(format!(
            "model '{}' is not available: its queue was shut down",
            self.core.model
        ))
    }
}

impl Drop for ModelQueue {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The receiving side of a model's queue, shared by its batch threads: whoever holds the lock assembles the next
/// batch (waiting for work, or for `max_queue_delay`, while holding it); the others sleep on the lock until then.
struct Intake {
    rx: mpsc::Receiver<Msg>,
    /// Received and not yet taken; FIFO, except that shape grouping may leave other shapes for a later batch.
    pending: VecDeque<Job>,
    /// `Stop` was received: finish what is pending, then exit without waiting for more.
    stopping: bool,
}

impl Intake {
    fn accept(&mut self, msg: Msg) {
        match msg {
            Msg::Job(job) => self.pending.push_back(job),
            Msg::Stop => self.stopping = true,
        }
    }

    /// Moves everything already sent into `pending`, without blocking.
    fn drain(&mut self) {
        while !self.stopping {
            match self.rx.try_recv() {
                Ok(msg) => self.accept(msg),
                Err(_) => break,
            }
        }
    }
}

/// State of one batch thread: its runner, plus the model's shared core and intake.
struct BatchThread {
    core: Arc<Core>,
    intake: Arc<Mutex<Intake>>,
    runner: SharedRunner,
}

impl BatchThread {
    /// The thread body: take the next batch from the shared intake, run it; until stopped and drained.
    fn serve(self) {
        loop {
            let batch = {
                // Poisoning cannot leave the intake half-updated (no panics inside), so its data is still good.
                let mut intake = self.intake.lock().unwrap_or_else(PoisonError::into_inner);
                self.next_batch(&mut intake)
            };
            match batch {
                Some(batch) => self.run_batch(batch),
                None => return,
            }
        }
    }

    /// Blocks until a batch is due (policy: size, preferred sizes, `max_queue_delay`) and takes it; `None` once
    /// stopping with nothing left. Sleeps in `recv` / `recv_timeout`, never polls.
    fn next_batch(&self, intake: &mut Intake) -> Option<Vec<Job>> {
        loop {
            self.drop_cancelled_head(intake);
            if intake.pending.is_empty() {
                if intake.stopping {
                    return None;
                }
                // Idle: sleep until work arrives (no polling, no delay once it does).
                match intake.rx.recv() {
                    Ok(msg) => intake.accept(msg),
                    Err(_) => intake.stopping = true,
                }
                continue;
            }
            intake.drain();
            let policy = &self.core.plan.policy;
            let (ready, oldest) = self.ready(&intake.pending, policy.enough());
            let decision = if intake.stopping {
                // Shutting down: run what is there without waiting for company.
                Decision::Take(ready)
            } else {
                policy.decide(ready, oldest, Instant::now())
            };
            match decision {
                Decision::Take(count) => {
                    let batch = self.take_batch(&mut intake.pending, count);
                    if !batch.is_empty() {
                        return Some(batch);
                    }
                }
                Decision::WaitUntil(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match intake.rx.recv_timeout(wait) {
                        Ok(msg) => intake.accept(msg),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => intake.stopping = true,
                    }
                }
            }
        }
    }

    /// Removes cancelled jobs from the front, so the head is a live job that decides the batch's key and age.
    fn drop_cancelled_head(&self, intake: &mut Intake) {
        while intake.pending.front().is_some_and(|job| job.reply.is_closed()) {
            intake.pending.pop_front();
            self.core.depth.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Live jobs that can join the head's batch (same shape key), counted up to `enough`, and the head's arrival.
    fn ready(&self, pending: &VecDeque<Job>, enough: usize) -> (usize, Instant) {
        let Some(head) = pending.front() else {
            return (0, Instant::now());
        };
        let mut ready = 0;
        for job in pending {
            if !job.reply.is_closed() && (!self.core.plan.group_by_shape || job.key == head.key) {
                ready += 1;
                if ready >= enough {
                    break;
                }
            }
        }
        (ready.max(1), head.queued_at)
    }

    /// Takes up to `count` live jobs, FIFO; with shape grouping, only jobs whose key equals the first one's.
    fn take_batch(&self, pending: &mut VecDeque<Job>, count: usize) -> Vec<Job> {
        let cap = count.clamp(1, self.core.plan.mode.batch_size());
        let mut batch: Vec<Job> = Vec::with_capacity(cap.min(pending.len()));
        let mut index = 0;
        while index < pending.len() && batch.len() < cap {
            let job = &pending[index];
            // A closed reply means the caller gave up: skip the work.
            let take = job.reply.is_closed() || batch.first().is_none_or(|first| first.key == job.key);
            if !take {
                index += 1;
                continue;
            }
            let Some(job) = pending.remove(index) else { break };
            self.core.depth.fetch_sub(1, Ordering::Relaxed);
            if !job.reply.is_closed() {
                batch.push(job);
            }
        }
        batch
    }

    /// Runs one batch and answers every instance in it; failures reach every instance of the batch.
    fn run_batch(&self, batch: Vec<Job>) {
        // FIFO: the first job is the oldest of the batch.
        let queue_wait = batch.first().map_or(Duration::ZERO, |job| job.queued_at.elapsed());
        for job in &batch {
            if let Some(note) = &job.note {
                note.note(batch.len(), job.queued_at.elapsed());
            }
        }
        let (instances, replies): (Vec<Vec<Tensor>>, Vec<oneshot::Sender<InstanceResult>>) =
            batch.into_iter().map(|job| (job.inputs, job.reply)).unzip();
        let (outcome, run) = {
            // Poisoning cannot happen (execute catches panics); if it did, the runner itself is still usable.
            let mut runner = self.runner.lock().unwrap_or_else(PoisonError::into_inner);
            self.core.execute(&mut **runner, instances, queue_wait)
        };
        match outcome {
            Ok(per_instance) => {
                for (reply, outputs) in replies.into_iter().zip(per_instance) {
                    // The caller may have gone away meanwhile; its result is simply dropped.
                    let _ = reply.send(Ok(outputs));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        // After the replies, so metrics never delay an answer.
        self.core.observe(&run);
    }
}

impl Core {
    /// Stacks, runs and splits one batch (1 ..= batch size instances); a failure, a runner panic included, is a
    /// `ServeError::Model` naming the model, for every instance. Also returns the run's report for `observe`.
    fn execute(
        &self,
        runner: &mut dyn BatchRunner,
        instances: Vec<Vec<Tensor>>,
        queue_wait: Duration,
    ) -> (Result<Vec<Vec<Tensor>>, ServeError>, BatchRun) {
        let started = Instant::now();
        let real = instances.len();
        let plan = &self.plan;
        // A panicking runner must not kill the model: it fails this batch like any other model error.
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Vec<Tensor>>, String> {
            let inputs = plan.stack(&instances)?;
            drop(instances);
            let outputs = runner.run(inputs).map_err(|e| e.message().to_owned())?;
            plan.split(outputs, real)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("the model runner panicked: {what}"))
        });
        let elapsed = started.elapsed();
        let sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let average = self.run_ns.load(Ordering::Relaxed);
        // A moving average over about eight runs; racing updates from two runners only lose a sample.
        let average = if average == u64::MAX {
            sample
        } else {
            average - average / 8 + sample / 8
        };
        self.run_ns.store(average, Ordering::Relaxed);
        let run = BatchRun {
            instances: real,
            queue_wait,
            run: elapsed,
            ok: outcome.is_ok(),
        };
        tracing::trace!(
            model = %self.model,
            instances = real,
            queue_wait_us = queue_wait.as_micros(),
            run_us = elapsed.as_micros(),
            "batch"
        );
        let outcome = outcome.map_err(|text| {
            tracing::warn!(model = %self.model, instances = real, "predict failed: {}", log_text(&text));
            ServeError::Model(format!("Predict failed, model '{}': {text}", self.model))
        });
        (outcome, run)
    }

    /// Hands a run's report to the observer, if one is set.
    fn observe(&self, run: &BatchRun) {
        if let Some(observer) = self.observer.get() {
            observer.batch_done(run);
        }
    }
}

/// Default ONNX Runtime intra-op threads for one session when `Context(thread_num=...)` does not say: the cores
/// of this machine shared by the sessions that may run at once (`sessions`), at least one.
// NOTE: ORT's own default is one thread per core for every session; with several models (or several sessions of
// one model) that oversubscribes the cores and their spinning pool threads compete with tokio and Python.
pub fn default_intra_op_threads(sessions: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / sessions.max(1)).max(1)
}

#[cfg(test)]
mod tests;
