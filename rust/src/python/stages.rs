//! Calling one Python stage for a call's instances, with MindSpore's conventions: per-instance functions get
//! `f(*inputs)`, batch functions get `f([inputs, ...])` and may return a list or yield per instance. Exceptions
//! fail their instance(s); broken contracts (wrong output count, fewer results, unconvertible values) fail the
//! whole call but never the server. Also `model_call`, behind `Model.call`. The GIL thread and the worker
//! processes (`workers::run_worker`) both run stages through `run`, so conventions and texts are the same.

use super::convert::{py_to_tensor, stage_output_to_tensor, tensor_to_py};
use crate::error::ServeError;
use crate::log_text::log_text;
use crate::pipeline::{FunctionCall, ModelSet};
use crate::request::InstanceResult;
use crate::tensor::Tensor;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

/// `Model.call` in a worker process: sends the converted inputs to the server, which runs them on its batcher.
pub type RemoteModels = Rc<dyn Fn(Python<'_>, &str, usize, Vec<Vec<Tensor>>) -> Result<Vec<InstanceResult>, String>>;

thread_local! {
    /// Models of the servable whose stage runs right now on this thread, for `Model.call`.
    static CURRENT_MODELS: RefCell<Option<Arc<ModelSet>>> = const { RefCell::new(None) };
    /// Set for the lifetime of a worker process's loop: `Model.call` goes to the server instead.
    static REMOTE_MODELS: RefCell<Option<RemoteModels>> = const { RefCell::new(None) };
}

/// Makes `Model.call` on this thread go through `remote` (a worker process), or back to local models (`None`).
pub fn set_remote_models(remote: Option<RemoteModels>) {
    REMOTE_MODELS.with(|r| *r.borrow_mut() = remote);
}

/// Why a call went wrong: a user exception (per instance) or a broken contract (the whole call).
enum Failure {
    Raised(String),
    Contract(String),
}

struct Call<'a> {
    call: &'a FunctionCall,
}

impl Call<'_> {
    fn error(&self, detail: &str) -> ServeError {
        ServeError::Stage(format!(
            "Call {} Failed, method: '{}', stage index(begin with 1): {}, error msg: {detail}",
            self.call.tag, self.call.method, self.call.stage_index
        ))
    }

    fn raised(&self, py: Python<'_>, err: &PyErr) -> Failure {
        let traceback = err.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default();
        // NOTE: the exception text may echo request data: escaped, and every traceback line indented, so nothing in
        // it can pass for a log record of its own.
        let mut indented = String::new();
        for line in traceback.lines() {
            let _ = write!(indented, "\n    {}", log_text(line));
        }
        tracing::warn!(
            "{}: stage {} raised {}{traceback}",
            log_text(&self.call.method),
            log_text(&self.call.tag),
            log_text(&err.to_string()),
            traceback = indented
        );
        let text = err.value(py).str().map_or_else(|_| err.to_string(), |s| s.to_string());
        Failure::Raised(text)
    }

    fn args<'py>(py: Python<'py>, inputs: &[Tensor]) -> Result<Bound<'py, PyTuple>, Failure> {
        let values = inputs.iter().map(|t| tensor_to_py(py, t)).collect::<PyResult<Vec<_>>>();
        values
            .and_then(|v| PyTuple::new(py, v))
            .map_err(|e| Failure::Contract(format!("input conversion failed: {e}")))
    }

    /// One instance's return value -> its output tensors.
    fn outputs(&self, value: &Bound<'_, PyAny>) -> Result<Vec<Tensor>, Failure> {
        let items: Vec<Bound<'_, PyAny>> = if value.is_instance_of::<PyTuple>() || value.is_instance_of::<PyList>() {
            value
                .try_iter()
                .and_then(Iterator::collect)
                .map_err(|e| Failure::Contract(e.to_string()))?
        } else {
            vec![value.clone()]
        };
        if items.len() != self.call.outputs_count {
            return Err(Failure::Contract(format!(
                "The outputs number {} of one instance returned by function '{}' is not equal to the outputs number \
                 {}  registered in method {}",
                items.len(),
                self.call.name,
                self.call.outputs_count,
                self.call.method
            )));
        }
        // An array returned fresh is referenced here twice: by `items` and by the returned value (itself, or the
        // tuple or list holding it); one more reference means the stage kept it (see `stage_output_to_tensor`).
        items
            .iter()
            .map(|item| {
                stage_output_to_tensor(item, 2)
                    .map_err(|e| Failure::Contract(format!("Push py task result cause exception: {e}")))
            })
            .collect()
    }

    fn per_instance(&self, py: Python<'_>, function: &Bound<'_, PyAny>) -> Result<Vec<InstanceResult>, Failure> {
        let mut results = Vec::with_capacity(self.call.instances.len());
        for inputs in &self.call.instances {
            let args = Self::args(py, inputs)?;
            match function.call1(args) {
                Ok(value) => results.push(Ok(self.outputs(&value)?)),
                Err(err) => match self.raised(py, &err) {
                    Failure::Raised(text) => results.push(Err(self.error(&text))),
                    contract @ Failure::Contract(_) => return Err(contract),
                },
            }
        }
        Ok(results)
    }

    /// Calls a batch function on `indices` and keeps calling it on the rest when a generator raises.
    fn batch(
        &self,
        py: Python<'_>,
        function: &Bound<'_, PyAny>,
        indices: &[usize],
        results: &mut [Option<InstanceResult>],
    ) -> Result<(), Failure> {
        let mut pending = indices;
        while !pending.is_empty() {
            let args = pending
                .iter()
                .map(|&i| Self::args(py, &self.call.instances[i]))
                .collect::<Result<Vec<_>, _>>()?;
            let list = PyList::new(py, args).map_err(|e| Failure::Contract(e.to_string()))?;
            let returned = match function.call1((list,)).and_then(|r| r.try_iter()) {
                Ok(iter) => iter,
                Err(err) => {
                    let text = match self.raised(py, &err) {
                        Failure::Raised(text) | Failure::Contract(text) => text,
                    };
                    for &i in pending {
                        results[i] = Some(Err(self.error(&text)));
                    }
                    return Ok(());
                }
            };
            let mut done = 0;
            let mut restart = None;
            for item in returned {
                if done == pending.len() {
                    break; // extra items are ignored, as in MindSpore
                }
                match item {
                    Ok(value) => results[pending[done]] = Some(Ok(self.outputs(&value)?)),
                    Err(err) => {
                        let text = match self.raised(py, &err) {
                            Failure::Raised(text) | Failure::Contract(text) => text,
                        };
                        results[pending[done]] = Some(Err(self.error(&text)));
                        restart = Some(done + 1);
                        break;
                    }
                }
                done += 1;
            }
            match restart {
                Some(next) => pending = &pending[next..],
                None if done < pending.len() => {
                    return Err(Failure::Contract(format!(
                        "The number {done} of instances returned by function '{}' is not equal to the number {} of \
                         instances provided to this function.",
                        self.call.name,
                        pending.len()
                    )));
                }
                None => pending = &[],
            }
        }
        Ok(())
    }

    fn batched(
        &self,
        py: Python<'_>,
        function: &Bound<'_, PyAny>,
        batch_size: usize,
    ) -> Result<Vec<InstanceResult>, Failure> {
        let n = self.call.instances.len();
        let mut results: Vec<Option<InstanceResult>> = vec![None; n];
        let all: Vec<usize> = (0..n).collect();
        // NOTE: batch_size 0 means "system chosen": the whole request goes in one call.
        let chunk = if batch_size == 0 { n.max(1) } else { batch_size };
        for indices in all.chunks(chunk) {
            self.batch(py, function, indices, &mut results)?;
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ServeError::Internal("batch stage left an instance unanswered".into()))))
            .collect())
    }
}

/// Runs a stage call with `function` (while attached); always answers one result per instance.
pub fn run(py: Python<'_>, function: &Bound<'_, PyAny>, call: &FunctionCall) -> Vec<InstanceResult> {
    let n = call.instances.len();
    CURRENT_MODELS.with(|c| *c.borrow_mut() = Some(call.models.clone()));
    let stage = Call { call };
    let outcome = match call.batch_size {
        None => stage.per_instance(py, function),
        Some(size) => stage.batched(py, function, size),
    };
    CURRENT_MODELS.with(|c| *c.borrow_mut() = None);
    match outcome {
        Ok(results) => results,
        Err(Failure::Contract(text) | Failure::Raised(text)) => {
            tracing::error!(
                "{}: stage {} broke its contract: {}",
                log_text(&call.method),
                log_text(&call.tag),
                log_text(&text)
            );
            vec![Err(stage.error(&text)); n]
        }
    }
}

/// Runs a declared model of the calling servable on per-instance inputs (the native half of `Model.call`).
/// Returns one tuple of outputs per instance. Blocks the calling stage, with the GIL released, until done; in a
/// worker process the model runs in the server, on the same batcher.
#[pyfunction]
pub fn model_call(
    py: Python<'_>,
    model_key: &str,
    subgraph: usize,
    instances: Vec<Vec<Bound<'_, PyAny>>>,
) -> PyResult<Vec<Py<PyTuple>>> {
    let current = CURRENT_MODELS.with(|c| c.borrow().clone());
    let Some(models) = current else {
        return Err(super::ModelCallError::new_err(
            "it can only be used inside a Python stage while serving",
        ));
    };
    let mut inputs = Vec::with_capacity(instances.len());
    for values in &instances {
        let tensors = values.iter().map(py_to_tensor).collect::<Result<Vec<_>, _>>();
        inputs.push(tensors.map_err(super::ModelCallError::new_err)?);
    }
    let remote = REMOTE_MODELS.with(|r| r.borrow().clone());
    let key = model_key.to_owned();
    let results = match remote {
        Some(remote) => remote(py, model_key, subgraph, inputs),
        None => py.detach(move || models.call(&key, subgraph, inputs)),
    }
    .map_err(super::ModelCallError::new_err)?;
    results
        .into_iter()
        .map(|result| {
            let outputs = result.map_err(|e| super::ModelCallError::new_err(e.message().to_string()))?;
            let values = outputs
                .iter()
                .map(|t| tensor_to_py(py, t))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyTuple::new(py, values)?.unbind())
        })
        .collect()
}
