//! The loop a Python worker process runs (`python -m rustserve.worker` calls `run_worker`): it connects to its
//! supervisor in the server (`workers::supervisor`), receives the functions to serve and then stage calls over
//! `workers::ipc`, runs them with the same conventions as the GIL thread (`stages::run`), and sends its `Model.call`
//! requests back to the server, whose batchers run the models.

use super::detached;
use super::stages::{self, RemoteModels};
use crate::error::ServeError;
use crate::pipeline::{FunctionCall, ModelSet};
use crate::spec::FunctionId;
use crate::tensor::Tensor;
use crate::workers::ipc::{self, Frame, FunctionEntry, Shm, ShmReader, ShmWriter};
use pyo3::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
/// The worker's end of the connection.
struct Link {
    stream: UnixStream,
    from_server: ShmReader,
    to_server: ShmWriter,
}

impl Link {
    fn send(&mut self, frame: &Frame) -> io::Result<()> {
        let wire = ipc::encode(frame, &mut self.to_server)?;
        ipc::send_all(&self.stream, &wire)
    }

    /// The next frame, waiting with the GIL released; `None` when the server closed the connection.
    fn recv(&mut self, py: Python<'_>) -> Result<Option<Frame>, String> {
        let stream = &self.stream;
        let body = py
            .detach(|| ipc::read_frame(stream))
            .map_err(|e| format!("lost the server: {e}"))?;
        body.map(|body| ipc::decode(&body, &mut self.from_server)).transpose()
    }
}

fn remote_models(link: Rc<RefCell<Link>>) -> RemoteModels {
    Rc::new(
        move |py: Python<'_>, key: &str, subgraph: usize, instances: Vec<Vec<Tensor>>| {
            let mut link = link
                .try_borrow_mut()
                .map_err(|_| "Model.call cannot be nested".to_string())?;
            let frame = Frame::ModelCall {
                key: key.to_owned(),
                subgraph: subgraph as u64,
                instances,
            };
            link.send(&frame).map_err(|e| format!("lost the server: {e}"))?;
            match link.recv(py)? {
                Some(Frame::ModelReply(reply)) => reply,
                Some(other) => Err(format!("unexpected {} frame from the server", other.name())),
                None => Err("Servable stopped".into()),
            }
        },
    )
}

fn serve_calls(py: Python<'_>, link: &Rc<RefCell<Link>>, table: &HashMap<u64, Py<PyAny>>) -> Result<(), String> {
    let no_models = Arc::new(ModelSet::default());
    loop {
        let frame = link.borrow_mut().recv(py)?;
        let call = match frame {
            None => return Ok(()),
            Some(Frame::Call(call)) => call,
            Some(other) => return Err(format!("unexpected {} frame from the server", other.name())),
        };
        let call = FunctionCall {
            function: FunctionId(usize::try_from(call.function).unwrap_or(usize::MAX)),
            name: call.name,
            tag: call.tag,
            method: call.method,
            stage_index: call.stage_index as usize,
            outputs_count: call.outputs_count as usize,
            batch_size: call.batch_size.map(|b| b as usize),
            instances: call.instances,
            models: no_models.clone(),
        };
        let results = if let Some(function) = table.get(&(call.function.0 as u64)) {
            stages::run(py, function.bind(py), &call)
        } else {
            let err = ServeError::Internal(format!("stage function {} is not served by this worker", call.name));
            vec![Err(err); call.instances.len()]
        };
        link.borrow_mut()
            .send(&Frame::Results(results))
            .map_err(|e| format!("lost the server: {e}"))?;
    }
}

/// Matches the server's function list against this process's `(method, stage index, name, function)` list.
fn function_table(
    py: Python<'_>,
    wanted: &[FunctionEntry],
    functions: &[(String, u32, String, Py<PyAny>)],
) -> Result<HashMap<u64, Py<PyAny>>, String> {
    let mut table = HashMap::new();
    let mut problems = Vec::new();
    for entry in wanted {
        let found = functions
            .iter()
            .find(|(method, stage, _, _)| *method == entry.method && *stage == entry.stage_index);
        match found {
            Some((_, _, name, function)) if *name == entry.name => {
                table.insert(entry.id, function.clone_ref(py));
            }
            Some((_, _, name, _)) => problems.push(format!(
                "stage {} of method '{}' is {} in the server but {name} here",
                entry.stage_index, entry.method, entry.name
            )),
            None => problems.push(format!(
                "stage {} of method '{}' ({}) is not a Python stage here",
                entry.stage_index, entry.method, entry.name
            )),
        }
    }
    if problems.is_empty() {
        Ok(table)
    } else {
        Err(format!(
            "servable_config.py declared other stages in the worker process than in the server: {}",
            problems.join("; ")
        ))
    }
}

/// The loop of a worker process (`python -m rustserve.worker`): connects to the server at `socket_path`, serves
/// the stage calls it sends with `functions` (`(method, 1-based stage index, "<servable>.<name>", callable)`, as
/// servable_config.py registered them) until the server closes the connection. With `error`, only reports that
/// the worker could not start. Returns False when the setup failed (the server has the reason).
#[pyfunction]
#[pyo3(signature = (socket_path, functions, error = None))]
pub fn run_worker(
    py: Python<'_>,
    socket_path: &str,
    functions: Vec<(String, u32, String, Py<PyAny>)>,
    error: Option<String>,
) -> PyResult<bool> {
    // Die with the server even in the middle of a stage: the kernel sends SIGKILL when the thread that spawned
    // us (the server's supervisor thread) ends. SAFETY: prctl with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let failure = |e: String| ServeError::Internal(format!("rustserve worker: {e}"));
    let fail = |e: String| PyErr::from(failure(e));
    let path = Path::new(socket_path).to_path_buf();
    let stream = detached(py, move || {
        UnixStream::connect(path).map_err(|e| failure(format!("cannot connect to '{socket_path}': {e}")))
    })?;
    let (body, mut fds) = detached(py, || {
        ipc::recv_with_fds(&stream).map_err(|e| failure(format!("no setup from the server: {e}")))
    })?;
    let Some(body) = body else { return Ok(false) };
    let Frame::Setup { functions: wanted } = ipc::decode(&body, &mut Vec::new()).map_err(fail)? else {
        return Err(fail("the server's first frame is not Setup".into()));
    };
    let refuse = |message: String| {
        let wire = ipc::encode(&Frame::SetupFailed { message }, &mut Vec::new())?;
        ipc::send_all(&stream, &wire)
    };
    if let Some(message) = error {
        refuse(message).map_err(|e| fail(e.to_string()))?;
        return Ok(false);
    }
    let table = match function_table(py, &wanted, &functions) {
        Ok(table) => table,
        Err(message) => {
            refuse(message).map_err(|e| fail(e.to_string()))?;
            return Ok(false);
        }
    };
    if fds.len() != 2 {
        return Err(fail(format!("expected 2 shared-memory regions, got {}", fds.len())));
    }
    let to_server = fds.pop().map(Shm::open).transpose().map_err(|e| fail(e.to_string()))?;
    let from_server = fds.pop().map(Shm::open).transpose().map_err(|e| fail(e.to_string()))?;
    let (Some(to_server), Some(from_server)) = (to_server, from_server) else {
        return Err(fail("missing shared-memory regions".into()));
    };
    let wire = ipc::encode(
        &Frame::Ready {
            pid: std::process::id(),
        },
        &mut Vec::new(),
    )
    .map_err(|e| fail(e.to_string()))?;
    ipc::send_all(&stream, &wire).map_err(|e| fail(e.to_string()))?;
    let link = Rc::new(RefCell::new(Link {
        stream,
        from_server: ShmReader::new(from_server),
        to_server: ShmWriter::new(to_server),
    }));
    stages::set_remote_models(Some(remote_models(link.clone())));
    let served = serve_calls(py, &link, &table);
    stages::set_remote_models(None);
    served.map(|()| true).map_err(fail)
}
