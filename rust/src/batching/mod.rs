//! Per-model batching with MindSpore semantics: each instance is checked (byte size, dtype) before it is queued,
//! then one dedicated thread per model takes whatever is queued (FIFO, across callers, up to the batch size, no
//! waiting), stacks and pads it, runs the model once and answers every caller through a oneshot.

mod plan;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use self::plan::{BatchMode, DEFAULT_MAX_BATCH_SIZE};
use self::plan::{BatchPlan, CheckedInstance};
use crate::error::ServeError;
use crate::model::{DeviceChoice, ModelSignature, OrtRunner};
use crate::tensor::Tensor;

/// How a model is batched (MindSpore's `declare_model(with_batch_dim=..., without_batch_dim_inputs=...)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Dim 0 of the model's inputs and outputs is the batch dimension.
    pub with_batch_dim: bool,
    /// Input indices that are passed whole, once per batch, taken from the batch's first instance.
    pub without_batch_dim_inputs: Vec<usize>,
    /// Rows per run for a symbolic batch dimension (`None`: `DEFAULT_MAX_BATCH_SIZE`); ignored for a static one.
    pub max_batch_size: Option<usize>,
}

/// Runs one full batch: inputs in model input order, outputs in model output order. `OrtRunner` implements it;
/// tests use fakes. Called only from the model's batch thread.
pub trait BatchRunner: Send {
    /// Runs the model once on full-batch tensors.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError>;
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
}

enum Msg {
    Job(Job),
    Stop,
}

/// The queue and batch thread of one model file.
// NOTE: one std thread per model does both the batching and the ORT run, instead of a tokio task that feeds a
// separate runner thread: it saves a thread hand-off per batch (~10 µs each way on our VMs, toolchain.md), needs
// no tokio runtime (the loader and the Python bridge can build queues from any thread), and `Session::run`
// blocks anyway. The thread sleeps in `recv()` when idle, so an idle model costs nothing.
pub struct ModelQueue {
    model: String,
    signature: ModelSignature,
    plan: Arc<BatchPlan>,
    tx: mpsc::Sender<Msg>,
    depth: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ModelQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelQueue")
            .field("model", &self.model)
            .field("mode", &self.plan.mode)
            .finish_non_exhaustive()
    }
}

impl ModelQueue {
    /// Loads `path` into an `OrtRunner` on `device` and starts its batch thread.
    ///
    /// Needs `crate::model::init_onnxruntime` first; does not need a tokio runtime. Validation errors are
    /// `ServeError::Config` with MindSpore's texts, naming the file.
    pub fn load(
        path: &Path,
        cfg: BatchConfig,
        device: DeviceChoice,
        intra_op_threads: Option<usize>,
    ) -> Result<ModelQueue, ServeError> {
        let runner = OrtRunner::load(path, device, intra_op_threads)?;
        let signature = runner.signature().clone();
        ModelQueue::new(&path.display().to_string(), signature, cfg, Box::new(runner))
    }

    /// Starts a batch thread for any runner; `model` names the model in errors (normally its file path).
    pub fn new(
        model: &str,
        signature: ModelSignature,
        cfg: BatchConfig,
        runner: Box<dyn BatchRunner>,
    ) -> Result<ModelQueue, ServeError> {
        let plan = Arc::new(BatchPlan::new(&signature, &cfg, model)?);
        let (tx, rx) = mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let worker = BatchThread {
            model: model.to_owned(),
            plan: Arc::clone(&plan),
            depth: Arc::clone(&depth),
            runner,
        };
        let file_name = Path::new(model)
            .file_name()
            .map_or_else(|| model.into(), |n| n.to_string_lossy());
        let thread = std::thread::Builder::new()
            .name(format!("rustserve-model-{file_name}"))
            .spawn(move || worker.serve(&rx))
            .map_err(|e| ServeError::Config(format!("model file '{model}': cannot start its batch thread: {e}")))?;
        Ok(ModelQueue {
            model: model.to_owned(),
            signature,
            plan,
            tx,
            depth,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Checks one instance (inputs in model input order) and queues it; the receiver yields its outputs.
    ///
    /// Check failures are returned at once as `ServeError::InvalidInput` with MindSpore's texts. Dropping the
    /// receiver cancels the instance if it has not run yet.
    pub fn submit(&self, inputs: Vec<Tensor>) -> Result<oneshot::Receiver<InstanceResult>, ServeError> {
        let CheckedInstance { inputs, key } = self.plan.check_instance(inputs)?;
        let (reply, rx) = oneshot::channel();
        self.depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Job(Job { inputs, key, reply })).is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(self.stopped());
        }
        Ok(rx)
    }

    /// Runs one instance (inputs in model input order) and returns its outputs (model output order), batched with
    /// whatever else is queued for this model. Cancel-safe: dropping the future drops the instance.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> InstanceResult {
        let rx = self.submit(inputs)?;
        rx.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Blocking `infer` for plain threads (e.g. the Python thread). Panics if called inside a tokio runtime.
    pub fn infer_blocking(&self, inputs: Vec<Tensor>) -> InstanceResult {
        let rx = self.submit(inputs)?;
        rx.blocking_recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Most instances per run: 1 without a batch dim, `N` for a static dim 0, `max_batch_size` for a symbolic one.
    pub fn batch_size(&self) -> usize {
        self.plan.mode.batch_size()
    }

    /// Whole / fixed / dynamic batching, with its size.
    pub fn batch_mode(&self) -> BatchMode {
        self.plan.mode
    }

    /// The model's inputs and outputs (full-batch shapes, as in the file).
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The name used in errors (the model file path for `load`).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Instances queued and not yet taken into a batch.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Stops the batch thread after it has run everything queued so far, and waits for it. Later calls to
    /// `infer` fail with `ServeError::Unavailable`. Idempotent; also run on drop, so dropping the last handle
    /// blocks until the queued instances have run (call it from a blocking context when much may be queued).
    pub fn shutdown(&self) {
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A send error means the thread is already gone; join reports how it ended either way.
            let _ = self.tx.send(Msg::Stop);
            if handle.join().is_err() {
                tracing::error!(model = %self.model, "model batch thread panicked");
            }
        }
    }

    fn stopped(&self) -> ServeError {
        ServeError::Unavailable(format!(
            "model '{}' is not available: its queue was shut down",
            self.model
        ))
    }
}

impl Drop for ModelQueue {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// State owned by a model's batch thread.
struct BatchThread {
    model: String,
    plan: Arc<BatchPlan>,
    depth: Arc<AtomicUsize>,
    runner: Box<dyn BatchRunner>,
}

impl BatchThread {
    /// The thread body: block for work, take a batch from what is queued, run it; until `Stop` or disconnect.
    fn serve(mut self, rx: &mpsc::Receiver<Msg>) {
        let mut pending: VecDeque<Job> = VecDeque::new();
        let mut stopping = false;
        loop {
            if pending.is_empty() {
                if stopping {
                    return;
                }
                // Idle: sleep until work arrives (no polling, no delay once it does).
                match rx.recv() {
                    Ok(Msg::Job(job)) => pending.push_back(job),
                    Ok(Msg::Stop) | Err(_) => return,
                }
            }
            while !stopping {
                match rx.try_recv() {
                    Ok(Msg::Job(job)) => pending.push_back(job),
                    Ok(Msg::Stop) => stopping = true,
                    Err(_) => break,
                }
            }
            let batch = self.take_batch(&mut pending);
            if !batch.is_empty() {
                self.run_batch(batch);
            }
        }
    }

    /// Takes up to a batch of live jobs, FIFO; with shape grouping, only jobs whose key equals the first one's.
    fn take_batch(&self, pending: &mut VecDeque<Job>) -> Vec<Job> {
        let cap = self.plan.mode.batch_size();
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
            self.depth.fetch_sub(1, Ordering::Relaxed);
            if !job.reply.is_closed() {
                batch.push(job);
            }
        }
        batch
    }

    /// Runs one batch and answers every instance in it; failures reach every instance of the batch.
    fn run_batch(&mut self, batch: Vec<Job>) {
        let (instances, replies): (Vec<Vec<Tensor>>, Vec<oneshot::Sender<InstanceResult>>) =
            batch.into_iter().map(|job| (job.inputs, job.reply)).unzip();
        let real = instances.len();
        let plan = &self.plan;
        let runner = &mut self.runner;
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
        match outcome {
            Ok(per_instance) => {
                for (reply, outputs) in replies.into_iter().zip(per_instance) {
                    // The caller may have gone away meanwhile; its result is simply dropped.
                    let _ = reply.send(Ok(outputs));
                }
            }
            Err(text) => {
                tracing::warn!(model = %self.model, instances = real, "predict failed: {text}");
                let error = ServeError::Model(format!("Predict failed, model '{}': {text}", self.model));
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
