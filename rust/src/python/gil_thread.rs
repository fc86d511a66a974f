//! The GIL thread: one OS thread that attaches to Python once and runs the Python stages the dispatcher gives it
//! (every servable's; worker processes add more executors, see `crate::dispatch` and `crate::workers`). It detaches only while
//! it waits for the next call, so model runs and I/O never wait for the GIL and the GIL is never taken on a tokio
//! worker.

use super::stages;
use crate::dispatch::{StageExecutor, Ticket};
use crate::error::ServeError;
use crate::pipeline::FunctionCall;
use crate::request::InstanceResult;
use pyo3::prelude::*;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

/// How often an idle GIL thread re-attaches: tensors that share a numpy array's memory and are dropped off this
/// thread (a reply written after the last Python stage) release the array only when some thread attaches.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Python callables of every loaded servable, indexed by `FunctionId`; `None` once released (the servable version
/// that registered it was unloaded or replaced).
pub type FunctionTable = Arc<RwLock<Vec<Option<Py<PyAny>>>>>;

/// Handle to the GIL thread; `shutdown` (or drop) ends it after the call in progress.
pub struct GilThread {
    sender: Mutex<Option<mpsc::Sender<Ticket>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub functions: FunctionTable,
}

/// Runs `call` with the function the table holds for it; always one result per instance.
fn run(py: Python<'_>, functions: &FunctionTable, call: &FunctionCall) -> Vec<InstanceResult> {
    let function = {
        let table = functions.read().unwrap_or_else(PoisonError::into_inner);
        table
            .get(call.function.0)
            .and_then(Option::as_ref)
            .map(|f| f.clone_ref(py))
    };
    if let Some(function) = function {
        stages::run(py, function.bind(py), call)
    } else {
        let err = ServeError::Internal(format!("stage function {} is not registered", call.name));
        vec![Err(err); call.instances.len()]
    }
}

impl GilThread {
    /// Starts the GIL thread.
    pub fn spawn() -> std::io::Result<GilThread> {
        let (sender, receiver) = mpsc::channel::<Ticket>();
        let functions = FunctionTable::default();
        let table = functions.clone();
        let thread = std::thread::Builder::new()
            .name("rustserve-python".into())
            .spawn(move || {
                Python::attach(|py| {
                    let mut receiver = receiver;
                    loop {
                        // `move` + hand back: a borrowed Receiver is not `Sync`, so it cannot cross `detach`.
                        let (ticket, back) = py.detach(move || (receiver.recv_timeout(DRAIN_EVERY), receiver));
                        receiver = back;
                        let ticket = match ticket {
                            Ok(ticket) => ticket,
                            // Re-attaching (at the end of `detach`) is what drains the decrefs of arrays.
                            Err(mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        };
                        // A panic in conversion code must not kill the only Python thread; the ticket, dropped
                        // unanswered, answers "Servable stopped".
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(py, &table, ticket.call())));
                        if let Ok(results) = outcome {
                            ticket.complete(results);
                        } else {
                            tracing::error!("a Python stage call panicked; its requests got an error");
                        }
                    }
                });
            })?;
        Ok(GilThread {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            functions,
        })
    }

    /// Registers a callable and returns its index. Call while attached.
    pub fn add_function(&self, function: Py<PyAny>) -> crate::spec::FunctionId {
        let mut table = self.functions.write().unwrap_or_else(PoisonError::into_inner);
        table.push(Some(function));
        crate::spec::FunctionId(table.len() - 1)
    }

    /// Drops the callables of `ids` (their ids are never reused); a call to one of them then fails with
    /// "is not registered". Needs no GIL: pyo3 defers the decrefs.
    pub fn release_functions(&self, ids: &[crate::spec::FunctionId]) {
        let mut table = self.functions.write().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if let Some(entry) = table.get_mut(id.0) {
                entry.take();
            }
        }
    }

    /// Stops accepting calls and joins the thread. Call with the GIL released.
    pub fn shutdown(&self) {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl StageExecutor for GilThread {
    fn start(&self, ticket: Ticket) -> Result<(), Ticket> {
        let guard = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(sender) => sender.send(ticket).map_err(|e| e.0),
            None => Err(ticket),
        }
    }
}

impl Drop for GilThread {
    fn drop(&mut self) {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}
