//! Test-only helpers shared by the `model` and `batching` tests: initialise ONNX Runtime and build the tiny ONNX
//! models of `rust/tests_data/make_test_models.py` once per test process. Missing tools fail the test loudly
//! (never skip) and say which environment variable to set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::tensor::Tensor;

/// Python with the `onnx` package (and, unless `RUSTSERVE_ORT_LIB` is set, `onnxruntime`).
const PYTHON_VAR: &str = "RUSTSERVE_TEST_PYTHON";
/// Path of `libonnxruntime.so.<version>`.
const ORT_LIB_VAR: &str = "RUSTSERVE_ORT_LIB";

fn python() -> String {
    std::env::var(PYTHON_VAR).unwrap_or_else(|_| "python3".to_owned())
}

fn run_python(args: &[&str]) -> String {
    let py = python();
    let out = Command::new(&py).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run python '{py}': {e}; set {PYTHON_VAR} to a python that has the onnx package")
    });
    assert!(
        out.status.success(),
        "python '{py}' failed (set {PYTHON_VAR} to a python that has the onnx package):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ort_lib() -> PathBuf {
    if let Some(path) = std::env::var_os(ORT_LIB_VAR) {
        return PathBuf::from(path);
    }
    let py = python();
    let script = "import glob, importlib.util as u\n\
                  s = u.find_spec('onnxruntime')\n\
                  libs = sorted(glob.glob(s.submodule_search_locations[0] + '/capi/libonnxruntime.so.*')) if s else []\n\
                  print(libs[-1] if libs else '')";
    let found = Command::new(&py)
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let path = found
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert!(
        !path.is_empty(),
        "cannot find libonnxruntime.so: set {ORT_LIB_VAR} to its path, or {PYTHON_VAR} to a python with onnxruntime"
    );
    PathBuf::from(path)
}

/// Initialises ORT and builds the test models (once per process); returns the models directory.
pub(crate) fn ort_ready() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let lib = ort_lib();
        super::init_onnxruntime(&lib).unwrap_or_else(|e| panic!("{e} (set {ORT_LIB_VAR} to a usable library)"));
        let root = std::env::temp_dir().join("rustserve-test-models");
        remove_stale_dirs(&root);
        let dir = root.join(std::process::id().to_string());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/rust/tests_data/make_test_models.py");
        let dir_text = dir.to_str().expect("temp dir path is UTF-8");
        assert_eq!(run_python(&[script, dir_text]), "ok");
        dir
    })
}

/// Removes model folders left by earlier test processes that have exited (folders are named by pid).
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let alive = name.to_str().is_some_and(|pid| Path::new("/proc").join(pid).exists());
        if !alive {
            // Best effort: a folder we cannot remove only wastes a few kilobytes.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Path of a test model built by `ort_ready`.
pub(crate) fn model_path(name: &str) -> PathBuf {
    ort_ready().join(format!("{name}.onnx"))
}

/// A float32 tensor from values.
pub(crate) fn f32_tensor(shape: Vec<i64>, values: &[f32]) -> Tensor {
    Tensor::from_values(shape, values).expect("values match shape")
}
