//! The GIL thread: one OS thread that attaches to Python once and runs every Python stage of this process.
//! Tokio tasks hand it jobs over a channel and await a oneshot; it detaches only while it waits for the next
//! job, so model runs and I/O never wait for the GIL and the GIL is never taken on a tokio worker.

use super::stages;
use crate::error::ServeError;
use crate::pipeline::{FunctionCall, PythonStages};
use crate::request::InstanceResult;
use futures::future::BoxFuture;
use pyo3::prelude::*;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// Python callables of every loaded servable, indexed by `FunctionId`.
pub type FunctionTable = Arc<RwLock<Vec<Py<PyAny>>>>;

/// Handle to the GIL thread; `shutdown` (or drop) ends it after the job in progress.
pub struct PyExecutor {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub functions: FunctionTable,
}

const STOPPED: &str = "Servable stopped";

impl PyExecutor {
    /// Starts the GIL thread.
    pub fn start() -> std::io::Result<PyExecutor> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("rustserve-python".into())
            .spawn(move || {
                Python::attach(|py| {
                    let mut receiver = receiver;
                    loop {
                        // `move` + hand back: a borrowed Receiver is not `Sync`, so it cannot cross `detach`.
                        let (job, back) = py.detach(move || (receiver.recv(), receiver));
                        receiver = back;
                        let Ok(job) = job else { break };
                        // A panic in conversion code must not kill the only Python thread.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(py))).is_err() {
                            tracing::error!("a Python stage job panicked; its request was answered with an error");
                        }
                    }
                });
            })?;
        Ok(PyExecutor {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            functions: Arc::default(),
        })
    }

    /// Registers a callable and returns its index. Call while attached.
    pub fn add_function(&self, function: Py<PyAny>) -> crate::servable::spec::FunctionId {
        let mut table = self
            .functions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.push(function);
        crate::servable::spec::FunctionId(table.len() - 1)
    }

    fn send(&self, job: Job) -> Result<(), ServeError> {
        let guard = self.sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_ref() {
            Some(sender) => sender.send(job).map_err(|_| ServeError::Unavailable(STOPPED.into())),
            None => Err(ServeError::Unavailable(STOPPED.into())),
        }
    }

    /// Stops accepting jobs and joins the thread. Call with the GIL released.
    pub fn shutdown(&self) {
        self.sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl PythonStages for PyExecutor {
    fn submit(&self, call: FunctionCall) -> BoxFuture<'static, Vec<InstanceResult>> {
        let count = call.instances.len();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let functions = self.functions.clone();
        let job: Job = Box::new(move |py| {
            let _ = reply.send(stages::run(py, &functions, call));
        });
        let sent = self.send(job);
        Box::pin(async move {
            if let Err(err) = sent {
                return vec![Err(err); count];
            }
            // A dropped reply (panic, shutdown) is an error for every instance, never a hang.
            answer
                .await
                .unwrap_or_else(|_| vec![Err(ServeError::Unavailable(STOPPED.into())); count])
        })
    }
}

impl Drop for PyExecutor {
    fn drop(&mut self) {
        self.sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}
