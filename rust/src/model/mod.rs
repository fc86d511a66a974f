//! ONNX Runtime model runner: loads the ORT library once per process, reads a model file's input/output signature,
//! and runs full-batch `Tensor`s through an `ort::Session` (CPU, or CUDA without silent fallback). An `OrtRunner`
//! is owned by exactly one thread (the model's batch thread in `batching`), because `Session::run` needs `&mut`.

mod convert;
#[cfg(test)]
pub(crate) mod test_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep;
use ort::logging::LogLevel;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{Outlet, ValueType};

use crate::batching::{BatchRunner, IoInfo, ModelSignature};
use crate::error::ServeError;
use crate::tensor::Tensor;

/// The process-wide ORT environment, set once by `init_onnxruntime`.
static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
/// Serialises initialisation: ort allows exactly one environment per process.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime from `lib_path` (a `libonnxruntime.so.<version>`) and creates the process's ORT environment.
///
/// Must run before any other function of this module. Only the first successful call loads anything; later calls
/// return `Ok(())` whatever path they name. A failed call (bad path, too old a library) can be retried.
pub fn init_onnxruntime(lib_path: &Path) -> Result<(), ServeError> {
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    // A poisoned lock only means another initialiser panicked; the OnceLock below is still consistent.
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    let fail = |e: &dyn std::fmt::Display| {
        ServeError::Config(format!("cannot load ONNX Runtime from '{}': {e}", lib_path.display()))
    };
    let env = ort::init_from(lib_path)
        .map_err(|e| fail(&e))?
        .with_name("rustserve")
        .with_logger(Arc::new(log_to_tracing))
        .build()
        .map_err(|e| fail(&e))?;
    // NOTE: a custom logger makes ORT log at VERBOSE; warnings and up are all we forward.
    env.set_log_level(LogLevel::Warning);
    // Cannot fail: we hold INIT_LOCK and checked the cell is empty.
    let _ = ENVIRONMENT.set(env);
    Ok(())
}

/// Forwards ONNX Runtime's own log lines to `tracing` (target `onnxruntime`) instead of ORT's coloured stderr.
fn log_to_tracing(level: LogLevel, category: &str, _id: &str, code_location: &str, message: &str) {
    match level {
        LogLevel::Error | LogLevel::Fatal => {
            tracing::error!(target: "onnxruntime", category, code_location, "{message}");
        }
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", category, code_location, "{message}"),
        LogLevel::Info | LogLevel::Verbose => {
            tracing::debug!(target: "onnxruntime", category, code_location, "{message}");
        }
    }
}

/// True once `init_onnxruntime` has succeeded in this process.
pub fn onnxruntime_initialised() -> bool {
    ENVIRONMENT.get().is_some()
}

/// The ORT environment, or the error every entry point returns before `init_onnxruntime`.
// NOTE: any ort call before `ort::init_from` dlopens `libonnxruntime.so` by name and panics when that fails
// (toolchain.md pitfall 5), so every public entry point goes through this check first.
fn environment() -> Result<&'static Environment, ServeError> {
    ENVIRONMENT.get().ok_or_else(|| {
        ServeError::Config(
            "ONNX Runtime is not initialised: call init_onnxruntime(<path to libonnxruntime.so>) first".to_owned(),
        )
    })
}

/// Where a model's session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// ORT's CPU execution provider.
    Cpu,
    /// The CUDA execution provider on this device id; loading fails (no CPU fallback) if CUDA is unusable.
    Cuda(i32),
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("CPU"),
            DeviceChoice::Cuda(id) => write!(f, "CUDA device {id}"),
        }
    }
}

/// Reads the input/output signature of an ONNX file.
///
/// Opens a throw-away CPU session with graph optimisations off (the I/O of a graph does not depend on them).
/// `OrtRunner::load` reads the same signature from its own session, so a server need not call both.
pub fn read_signature(path: &Path) -> Result<ModelSignature, ServeError> {
    let session = build_session(path, DeviceChoice::Cpu, Some(1), Some(GraphOptimizationLevel::Disable))?;
    signature_of(&session, path)
}

/// Creates a session for `path`; all failures are `Config` errors naming the file.
fn build_session(
    path: &Path,
    device: DeviceChoice,
    intra_op_threads: Option<usize>,
    optimization: Option<GraphOptimizationLevel>,
) -> Result<Session, ServeError> {
    let env = environment()?;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ServeError::Config(format!("model file '{}': {what}: {e}", path.display()))
    };
    if !path.is_file() {
        return Err(ServeError::Config(format!(
            "model file '{}' does not exist or is not a file",
            path.display()
        )));
    }
    let mut builder = Session::builder(env).map_err(|e| fail("cannot create an ONNX Runtime session", &e))?;
    if let Some(threads) = intra_op_threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| fail("cannot set intra-op threads", &e))?;
    }
    if let Some(level) = optimization {
        builder = builder
            .with_optimization_level(level)
            .map_err(|e| fail("cannot set the optimisation level", &e))?;
    }
    if let DeviceChoice::Cuda(id) = device {
        // NOTE: ort registers EPs leniently by default and silently runs on CPU when CUDA cannot load
        // (toolchain.md pitfall 6); a GPU request must fail loudly instead.
        let cuda = ep::CUDA::default().with_device_id(id).build().error_on_failure();
        builder = builder
            .with_execution_providers([cuda])
            .map_err(|e| fail(&format!("cannot use CUDA device {id}"), &e))?;
    }
    builder
        .commit_from_file(path)
        .map_err(|e| fail("ONNX Runtime cannot load the model", &e))
}

/// Converts the session's input/output metadata, rejecting types rustserve cannot carry.
fn signature_of(session: &Session, path: &Path) -> Result<ModelSignature, ServeError> {
    let io = |kind: &str, outlets: &[Outlet]| -> Result<Vec<IoInfo>, ServeError> {
        outlets
            .iter()
            .enumerate()
            .map(|(index, outlet)| {
                let unsupported = |ty: String| {
                    ServeError::Config(format!(
                        "model file '{}': {kind} {index} '{}' has unsupported ONNX type {ty}",
                        path.display(),
                        outlet.name()
                    ))
                };
                match outlet.dtype() {
                    ValueType::Tensor { ty, shape, .. } => Ok(IoInfo {
                        name: outlet.name().to_owned(),
                        dtype: convert::dtype_from_ort(*ty).ok_or_else(|| unsupported(convert::onnx_type_name(*ty)))?,
                        // ORT reports symbolic and unknown dimensions as -1 already.
                        shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
                    }),
                    other => Err(unsupported(other.to_string())),
                }
            })
            .collect()
    };
    Ok(ModelSignature {
        inputs: io("input", session.inputs())?,
        outputs: io("output", session.outputs())?,
    })
}

/// One ORT session for one (model file, device), with its signature. Not shared: the owning thread calls `run`.
pub struct OrtRunner {
    session: Session,
    path: PathBuf,
    device: DeviceChoice,
    signature: ModelSignature,
}

impl std::fmt::Debug for OrtRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRunner")
            .field("path", &self.path)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl OrtRunner {
    /// Loads `path` on `device`; `intra_op_threads` = `None` keeps ORT's default (one thread per core).
    pub fn load(path: &Path, device: DeviceChoice, intra_op_threads: Option<usize>) -> Result<OrtRunner, ServeError> {
        let session = build_session(path, device, intra_op_threads, None)?;
        let signature = signature_of(&session, path)?;
        Ok(OrtRunner {
            session,
            path: path.to_path_buf(),
            device,
            signature,
        })
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The model file this runner loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device the session runs on.
    pub fn device(&self) -> DeviceChoice {
        self.device
    }

    /// Runs one full batch: `inputs` in the model's input order, outputs in the model's output order.
    ///
    /// Errors are `ServeError::Model` with ONNX Runtime's text; the caller (the batcher) names the model.
    pub fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> {
        let expected = &self.signature.inputs;
        if inputs.len() != expected.len() {
            return Err(ServeError::Model(format!(
                "got {} inputs, the model has {}",
                inputs.len(),
                expected.len()
            )));
        }
        let mut values: Vec<SessionInputValue<'static>> = Vec::with_capacity(inputs.len());
        for (index, (tensor, info)) in inputs.iter().zip(expected).enumerate() {
            if tensor.dtype != info.dtype {
                return Err(ServeError::Model(format!(
                    "input {index} '{}' has dtype {}, the model expects {}",
                    info.name, tensor.dtype, info.dtype
                )));
            }
            let value = convert::to_ort_value(tensor)
                .map_err(|e| ServeError::Model(format!("input {index} '{}': {e}", info.name)))?;
            values.push(SessionInputValue::from(value));
        }
        let outputs = self
            .session
            .run(values.as_slice())
            .map_err(|e| ServeError::Model(e.to_string()))?;
        let names = &self.signature.outputs;
        if outputs.len() != names.len() {
            return Err(ServeError::Model(format!(
                "got {} outputs, the model declares {}",
                outputs.len(),
                names.len()
            )));
        }
        outputs
            .into_iter()
            .zip(names)
            .enumerate()
            .map(|(index, ((_, value), info))| {
                convert::from_ort_value(value)
                    .map_err(|e| ServeError::Model(format!("output {index} '{}': {e}", info.name)))
            })
            .collect()
    }
}

impl BatchRunner for OrtRunner {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> {
        OrtRunner::run(self, inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{f32_tensor, model_path, ort_ready};
    use super::*;
    use crate::tensor::DType;
    use bytes::Bytes;

    use crate::tensor::TensorData;

    #[test]
    fn signature_of_fixed_and_dynamic_models() {
        ort_ready();
        let sig = read_signature(&model_path("add_fixed")).unwrap();
        let f = |name: &str, shape: Vec<i64>| IoInfo {
            name: name.into(),
            dtype: DType::Float32,
            shape,
        };
        assert_eq!(sig.inputs, vec![f("x1", vec![2, 2]), f("x2", vec![2, 2])]);
        assert_eq!(sig.outputs, vec![f("y", vec![2, 2])]);
        let sig = read_signature(&model_path("mul_dynamic")).unwrap();
        assert_eq!(sig.inputs, vec![f("x", vec![-1, 3])]);
        let sig = read_signature(&model_path("string_identity")).unwrap();
        assert_eq!(sig.inputs[0].dtype, DType::String);
        assert_eq!(sig.outputs[0].shape, vec![-1, 2]);
    }

    #[test]
    fn unsupported_type_and_missing_file_are_config_errors() {
        ort_ready();
        let path = model_path("bf16_identity");
        let err = read_signature(&path).unwrap_err();
        let ServeError::Config(text) = &err else {
            panic!("{err:?}")
        };
        assert!(
            text.contains("bf16_identity.onnx") && text.contains("input 0 'x'") && text.contains("bfloat16"),
            "{text}"
        );
        let err = read_signature(Path::new("/nonexistent/model.onnx")).unwrap_err();
        assert!(
            matches!(&err, ServeError::Config(t) if t.contains("/nonexistent/model.onnx")),
            "{err:?}"
        );
    }

    #[test]
    fn add_fixed_runs() {
        ort_ready();
        let mut runner = OrtRunner::load(&model_path("add_fixed"), DeviceChoice::Cpu, Some(1)).unwrap();
        let out = runner
            .run(vec![
                f32_tensor(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
                f32_tensor(vec![2, 2], &[10.0, 20.0, 30.0, 40.0]),
            ])
            .unwrap();
        assert_eq!(out, vec![f32_tensor(vec![2, 2], &[11.0, 22.0, 33.0, 44.0])]);
        // wrong dtype and wrong count are model errors, not panics
        let err = runner.run(vec![f32_tensor(vec![2, 2], &[0.0; 4])]).unwrap_err();
        assert!(matches!(err, ServeError::Model(_)), "{err:?}");
        let bad = Tensor::from_values(vec![2, 2], &[1i32, 2, 3, 4]).unwrap();
        let err = runner.run(vec![bad.clone(), bad]).unwrap_err();
        assert!(matches!(&err, ServeError::Model(t) if t.contains("int32")), "{err:?}");
    }

    #[test]
    fn every_dtype_round_trips() {
        ort_ready();
        let mut runner = OrtRunner::load(&model_path("identity_all"), DeviceChoice::Cpu, Some(1)).unwrap();
        let inputs = vec![
            Tensor::from_values(vec![2], &[true, false]).unwrap(),
            Tensor::from_values(vec![2], &[-3i8, 4]).unwrap(),
            Tensor::from_values(vec![2], &[250u8, 4]).unwrap(),
            Tensor::from_values(vec![2], &[-300i16, 4]).unwrap(),
            Tensor::from_values(vec![2], &[60000u16, 4]).unwrap(),
            Tensor::from_values(vec![2], &[-70000i32, 4]).unwrap(),
            Tensor::from_values(vec![2], &[4_000_000_000u32, 4]).unwrap(),
            Tensor::from_values(vec![2], &[-5_000_000_000i64, 4]).unwrap(),
            Tensor::from_values(vec![2], &[u64::MAX, 4]).unwrap(),
            Tensor::from_values(vec![2], &[half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]).unwrap(),
            Tensor::from_values(vec![2], &[1.25f32, -7.5]).unwrap(),
            Tensor::from_values(vec![2], &[1e300f64, -0.5]).unwrap(),
            Tensor::new(
                DType::String,
                vec![2],
                TensorData::Items(vec![Bytes::from("héllo"), Bytes::new()]),
            )
            .unwrap(),
        ];
        let sig = runner.signature().clone();
        for (t, info) in inputs.iter().zip(&sig.inputs) {
            assert_eq!(t.dtype, info.dtype, "{}", info.name);
        }
        let out = runner.run(inputs.clone()).unwrap();
        assert_eq!(out, inputs);
    }

    #[test]
    fn float16_in_float16_and_float32_out() {
        ort_ready();
        let mut runner = OrtRunner::load(&model_path("f16_cast"), DeviceChoice::Cpu, None).unwrap();
        let vals: Vec<half::f16> = [0.5f32, 1.0, -2.0, 3.5, 100.0, -0.25]
            .iter()
            .map(|&v| half::f16::from_f32(v))
            .collect();
        let x = Tensor::from_values(vec![2, 3], &vals).unwrap();
        let out = runner.run(vec![x.clone()]).unwrap();
        assert_eq!(out[0], x);
        assert_eq!(out[1], f32_tensor(vec![2, 3], &[0.5, 1.0, -2.0, 3.5, 100.0, -0.25]));
    }

    #[test]
    fn bool_not_normalises_truthy_bytes() {
        ort_ready();
        let mut runner = OrtRunner::load(&model_path("bool_not"), DeviceChoice::Cpu, None).unwrap();
        let x = Tensor::from_raw(DType::Bool, vec![2, 2], vec![1u8, 0, 7, 0]).unwrap();
        let out = runner.run(vec![x]).unwrap();
        assert_eq!(out[0].to_values::<bool>().unwrap(), vec![false, true, false, true]);
    }

    #[test]
    fn bytes_and_bad_strings_cannot_enter_onnx() {
        ort_ready();
        let err = convert::to_ort_value(&Tensor::scalar_bytes(Bytes::from_static(b"x"))).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
        let bad = Tensor::new(
            DType::String,
            vec![1],
            TensorData::Items(vec![Bytes::from_static(b"\xff")]),
        )
        .unwrap();
        assert!(convert::to_ort_value(&bad).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn runtime_failure_is_a_model_error() {
        ort_ready();
        let mut runner = OrtRunner::load(&model_path("add_symbolic"), DeviceChoice::Cpu, Some(1)).unwrap();
        assert_eq!(runner.signature().inputs[0].shape, vec![-1, -1]);
        let err = runner.run(vec![
            f32_tensor(vec![1, 2], &[1.0, 2.0]),
            f32_tensor(vec![1, 3], &[1.0, 2.0, 3.0]),
        ]);
        assert!(matches!(&err, Err(ServeError::Model(t)) if !t.is_empty()), "{err:?}");
    }

    #[test]
    fn cuda_request_never_falls_back_silently() {
        ort_ready();
        // NOTE: on a machine without a usable CUDA EP (the CPU wheel, or no GPU) this must fail; with a working GPU
        // it must load and give the same result as the CPU.
        match OrtRunner::load(&model_path("add_fixed"), DeviceChoice::Cuda(0), None) {
            Err(ServeError::Config(text)) => {
                eprintln!("CUDA unavailable as expected: {text}");
                assert!(text.contains("CUDA device 0"), "{text}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(mut runner) => {
                let x = f32_tensor(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
                let out = runner.run(vec![x.clone(), x]).unwrap();
                assert_eq!(out, vec![f32_tensor(vec![2, 2], &[2.0, 4.0, 6.0, 8.0])]);
            }
        }
    }

    #[test]
    fn second_init_with_any_path_is_ok() {
        ort_ready();
        assert!(onnxruntime_initialised());
        init_onnxruntime(Path::new("/no/such/libonnxruntime.so")).unwrap();
    }

    /// Runs in a child process (see `uninitialised_entry_points_fail_cleanly`): ORT must not be initialised there.
    #[test]
    fn uninitialised_child() {
        if std::env::var_os("RUSTSERVE_UNINIT_CHILD").is_none() {
            return;
        }
        assert!(!onnxruntime_initialised());
        for err in [
            read_signature(Path::new("/tmp/x.onnx")).unwrap_err(),
            OrtRunner::load(Path::new("/tmp/x.onnx"), DeviceChoice::Cpu, None).unwrap_err(),
        ] {
            assert!(
                matches!(&err, ServeError::Config(t) if t.contains("not initialised")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn uninitialised_entry_points_fail_cleanly() {
        // Other tests initialise ORT in this process, so the check runs in a fresh copy of this test binary.
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "model::tests::uninitialised_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RUSTSERVE_UNINIT_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
