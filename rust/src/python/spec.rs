//! Spec dicts from python/rustserve/server/_spec.py -> `crate::spec` structs. Function objects go into the
//! executor's table here; everything else is plain data. Missing keys or wrong types are reported with the
//! key's path, since they mean the Python loader and this file disagree.

use super::gil_thread::GilThread;
use crate::spec::{DeviceKind, Distributed, MethodSpec, ModelSpec, ServableSpec, Source, StageKind, StageSpec};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

fn item<'py, T: FromPyObjectOwned<'py>>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    let value = dict
        .get_item(key)?
        .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(format!("servable spec: missing key '{key}'")))?;
    value.extract::<T>().map_err(|e| {
        let e: PyErr = e.into();
        pyo3::exceptions::PyTypeError::new_err(format!("servable spec: key '{key}' has the wrong type: {e}"))
    })
}

fn dicts<'py>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let list: Bound<'py, PyList> = item(dict, key)?;
    list.iter()
        .map(|d| d.cast_into::<PyDict>().map_err(PyErr::from))
        .collect()
}

fn sources(dict: &Bound<'_, PyDict>, key: &str) -> PyResult<Vec<Source>> {
    dicts(dict, key)?
        .iter()
        .map(|d| {
            Ok(Source {
                stage: item(d, "stage")?,
                index: item(d, "index")?,
            })
        })
        .collect()
}

fn model(dict: &Bound<'_, PyDict>) -> PyResult<ModelSpec> {
    let device_type: String = item(dict, "device_type")?;
    let device = match device_type.as_str() {
        "cpu" => DeviceKind::Cpu,
        "gpu" => DeviceKind::Gpu(item(dict, "device_ids")?),
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown device_type '{other}'"
            )));
        }
    };
    Ok(ModelSpec {
        key: item(dict, "key")?,
        files: item::<Vec<String>>(dict, "files")?
            .into_iter()
            .map(Into::into)
            .collect(),
        with_batch_dim: item(dict, "with_batch_dim")?,
        without_batch_dim_inputs: item(dict, "without_batch_dim_inputs")?,
        max_batch_size: item(dict, "max_batch_size")?,
        max_queue_delay: queue_delay(dict)?,
        preferred_batch_sizes: item(dict, "preferred_batch_sizes")?,
        device,
        intra_op_threads: item(dict, "intra_op_threads")?,
        distributed: distributed(dict)?,
    })
}

/// `distributed`: `None`, or `{"rank_size": n, "stage_size": m}`.
fn distributed(dict: &Bound<'_, PyDict>) -> PyResult<Option<Distributed>> {
    let value: Option<Bound<'_, PyDict>> = item(dict, "distributed")?;
    value
        .map(|d| {
            Ok(Distributed {
                rank_size: item(&d, "rank_size")?,
                stage_size: item(&d, "stage_size")?,
            })
        })
        .transpose()
}

/// `max_queue_delay_ms` (None = 0) as a `Duration`; register.py validates it, this only refuses what would panic.
fn queue_delay(dict: &Bound<'_, PyDict>) -> PyResult<std::time::Duration> {
    let millis: Option<f64> = item(dict, "max_queue_delay_ms")?;
    std::time::Duration::try_from_secs_f64(millis.unwrap_or(0.0) / 1000.0).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "servable spec: key 'max_queue_delay_ms' must be a finite number >= 0, got {millis:?}: {e}"
        ))
    })
}

fn stage(dict: &Bound<'_, PyDict>, executor: &GilThread) -> PyResult<StageSpec> {
    let kind: String = item(dict, "kind")?;
    let kind = match kind.as_str() {
        "model" => StageKind::Model {
            model: item(dict, "model")?,
            subgraph: item(dict, "subgraph")?,
        },
        "function" => StageKind::Function {
            function: executor.add_function(item(dict, "function")?),
            name: item(dict, "name")?,
            batch_size: item(dict, "batch_size")?,
        },
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown stage kind '{other}'"
            )));
        }
    };
    Ok(StageSpec {
        kind,
        inputs: sources(dict, "inputs")?,
        outputs_count: item(dict, "outputs_count")?,
        tag: item(dict, "tag")?,
    })
}

fn method(dict: &Bound<'_, PyDict>, executor: &GilThread) -> PyResult<MethodSpec> {
    Ok(MethodSpec {
        name: item(dict, "name")?,
        inputs: item(dict, "inputs")?,
        output_names: item(dict, "output_names")?,
        outputs: sources(dict, "outputs")?,
        stages: dicts(dict, "stages")?
            .iter()
            .map(|s| stage(s, executor))
            .collect::<PyResult<_>>()?,
    })
}

/// Where Python worker processes come from; only the Python bridge needs it, so it stays out of `ServableSpec`.
pub struct WorkerSettings {
    /// The servable directory (parent of the servable's folder); workers import servable_config.py from it.
    pub directory: String,
    /// Python stage executors of the version: n >= 2 are n worker processes.
    pub num_parallel_workers: usize,
    /// With fewer than 2 executors: true runs the stages on the server's GIL thread, false in one worker process.
    pub python_in_process: bool,
}

impl WorkerSettings {
    /// How many worker processes run the version's Python stages (0: the server's GIL thread runs them).
    pub fn worker_processes(&self) -> usize {
        if self.num_parallel_workers >= 2 {
            self.num_parallel_workers
        } else {
            usize::from(!self.python_in_process)
        }
    }
}

/// Reads the worker settings of one `ServableSpec` dict.
pub fn worker_settings(dict: &Bound<'_, PyDict>) -> PyResult<WorkerSettings> {
    Ok(WorkerSettings {
        directory: item(dict, "servable_directory")?,
        num_parallel_workers: item(dict, "num_parallel_workers")?,
        python_in_process: item(dict, "python_in_process")?,
    })
}

/// Converts one `ServableSpec` dict, registering its stage functions with `executor`.
pub fn servable(dict: &Bound<'_, PyDict>, executor: &GilThread) -> PyResult<ServableSpec> {
    Ok(ServableSpec {
        name: item(dict, "name")?,
        version: item(dict, "version")?,
        models: dicts(dict, "models")?.iter().map(model).collect::<PyResult<_>>()?,
        methods: dicts(dict, "methods")?
            .iter()
            .map(|m| method(m, executor))
            .collect::<PyResult<_>>()?,
    })
}
