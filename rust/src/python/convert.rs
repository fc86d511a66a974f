//! Python values <-> `Tensor` at the bridge, while attached. As in MindSpore, stages share memory with the pipeline
//! instead of getting copies: an input becomes a writable numpy array over the tensor's own bytes (`str` for
//! strings, a uint8 array per item for bytes), so an in-place edit is seen by every later reader of that value, and
//! a returned array becomes a tensor over the array's memory, which the tensor keeps referenced. Only what cannot be
//! shared is copied: unaligned or empty buffers, read-only, non-contiguous or byte-swapped arrays.

use crate::tensor::{DType, Tensor, TensorData};
use bytes::Bytes;
use numpy::npyffi::{self, NPY_ARRAY_ALIGNED, NPY_ARRAY_OWNDATA, NPY_ARRAY_WRITEABLE, PY_ARRAY_API, npy_intp};
use numpy::{PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

static FROMBUFFER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASCONTIGUOUS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NP_GENERIC: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
/// numpy's descriptor of every numeric `DType`, in `DType::ALL` order.
static DESCRS: PyOnceLock<Vec<Py<PyArrayDescr>>> = PyOnceLock::new();

fn numpy_fn<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || Ok(py.import("numpy")?.getattr(name)?.unbind()))
        .map(|f| f.bind(py))
}

/// Converts a tensor into the Python value a stage function receives.
pub fn tensor_to_py<'py>(py: Python<'py>, tensor: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    match &tensor.data {
        TensorData::Items(items) if tensor.dtype == DType::String => {
            let text = |b: &Bytes| PyString::new(py, &String::from_utf8_lossy(b)).into_any();
            if items.len() == 1 {
                Ok(text(&items[0]))
            } else {
                Ok(PyList::new(py, items.iter().map(text))?.into_any())
            }
        }
        TensorData::Items(items) => {
            // NOTE: MindSpore hands bytes to stages as a 1-D uint8 array (users call .tobytes()).
            let arrays: Vec<Bound<'py, PyAny>> = items
                .iter()
                .map(|b| bytes_to_numpy(py, b, DType::UInt8, &[b.len() as i64]))
                .collect::<PyResult<_>>()?;
            if arrays.len() == 1 {
                Ok(arrays.into_iter().next().expect("one item"))
            } else {
                Ok(PyList::new(py, arrays)?.into_any())
            }
        }
        TensorData::Raw(raw) => bytes_to_numpy(py, raw, tensor.dtype, &tensor.shape),
    }
}

/// Keeps a tensor's bytes alive under the numpy arrays that view them (their `base`).
#[pyclass(frozen, module = "rustserve._native")]
struct TensorMemory(#[allow(dead_code)] Bytes);

/// A writable numpy array over `raw`'s own memory (no copy). Empty and unaligned buffers are copied instead: an
/// empty `Bytes` may point at static memory, and unaligned arrays are slow and refused by some libraries.
fn bytes_to_numpy<'py>(py: Python<'py>, raw: &Bytes, dtype: DType, shape: &[i64]) -> PyResult<Bound<'py, PyAny>> {
    if raw.is_empty() || !(raw.as_ptr() as usize).is_multiple_of(dtype.item_size().max(1)) {
        return copy_to_numpy(py, raw, dtype.numpy_name(), shape);
    }
    let descrs = DESCRS.get_or_try_init(py, || {
        DType::ALL
            .iter()
            .map(|d| PyArrayDescr::new(py, if d.is_variable() { "uint8" } else { d.numpy_name() }).map(Bound::unbind))
            .collect::<PyResult<Vec<_>>>()
    })?;
    let position = DType::ALL.iter().position(|d| *d == dtype).unwrap_or(0);
    let descr = descrs[position].clone_ref(py).into_bound(py);
    let mut dims: Vec<npy_intp> = shape.iter().map(|&d| d as npy_intp).collect();
    let base = Bound::new(py, TensorMemory(raw.clone()))?;
    // SAFETY: `raw` holds `shape`'s element count of `dtype` (the `Tensor` invariant), aligned (checked above), in
    // heap memory that the pipeline only reads; numpy steals the descriptor reference and, through
    // `PyArray_SetBaseObject`, the base's, which keeps that memory alive as long as the array or any view of it.
    // The array is writable on purpose: stages share their inputs' memory as in MindSpore, and readers of a value
    // run one after another, never while a stage that may write it runs.
    unsafe {
        let array = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            npyffi::get_type_object(py, npyffi::NpyTypes::PyArray_Type),
            descr.into_dtype_ptr(),
            dims.len() as std::ffi::c_int,
            dims.as_mut_ptr(),
            std::ptr::null_mut(),
            raw.as_ptr().cast_mut().cast(),
            NPY_ARRAY_WRITEABLE,
            std::ptr::null_mut(),
        );
        let array = Bound::from_owned_ptr_or_err(py, array)?;
        if PY_ARRAY_API.PyArray_SetBaseObject(py, array.as_ptr().cast(), base.into_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(array)
    }
}

/// A writable numpy array holding a copy of `raw`.
fn copy_to_numpy<'py>(py: Python<'py>, raw: &[u8], dtype: &str, shape: &[i64]) -> PyResult<Bound<'py, PyAny>> {
    let buffer = PyByteArray::new(py, raw);
    let flat = numpy_fn(py, &FROMBUFFER, "frombuffer")?.call1((buffer, dtype))?;
    flat.call_method1("reshape", (PyTuple::new(py, shape)?,))
}

/// A numpy array's memory held by a `Bytes` without a copy; the array stays referenced while the bytes live (a drop
/// without the GIL is deferred by pyo3 to the next attach).
struct NumpyMemory {
    _array: Py<PyAny>,
    data: *const u8,
    len: usize,
}

// SAFETY: the memory is only read through `as_ref`, and `Py` is `Send`; the pointer stays valid while `_array` is
// referenced (a referenced numpy array cannot be resized).
unsafe impl Send for NumpyMemory {}

impl AsRef<[u8]> for NumpyMemory {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `data` addresses `len` bytes of the array held in `_array` (see `numpy_bytes`).
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

/// The numpy (kind, itemsize) -> DType mapping; `None` for object, unicode, complex and datetime arrays.
fn dtype_of(kind: u8, itemsize: usize) -> Option<DType> {
    Some(match (kind, itemsize) {
        (b'b', 1) => DType::Bool,
        (b'i', 1) => DType::Int8,
        (b'i', 2) => DType::Int16,
        (b'i', 4) => DType::Int32,
        (b'i', 8) => DType::Int64,
        (b'u', 1) => DType::UInt8,
        (b'u', 2) => DType::UInt16,
        (b'u', 4) => DType::UInt32,
        (b'u', 8) => DType::UInt64,
        (b'f', 2) => DType::Float16,
        (b'f', 4) => DType::Float32,
        (b'f', 8) => DType::Float64,
        _ => return None,
    })
}

fn illegal(obj: &Bound<'_, PyAny>) -> String {
    let type_repr = obj
        .get_type()
        .repr()
        .map_or_else(|_| "<unknown>".into(), |r| r.to_string());
    format!("Get illegal result data with type {type_repr}")
}

/// Converts a numpy array into a tensor. With `sole`, the caller knows nothing but itself references the array, so
/// an array that owns its data is kept instead of copied (see `numpy_bytes`); non-contiguous or byte-swapped arrays
/// are copied into fresh ones, which are kept.
pub fn numpy_to_tensor(obj: &Bound<'_, PyAny>, sole: bool) -> Result<Tensor, String> {
    let array = obj.cast::<PyUntypedArray>().map_err(|_| illegal(obj))?;
    // Read the shape here: `ascontiguousarray` turns a 0-d array into a 1-d one.
    let shape: Vec<i64> = array.shape().iter().map(|&d| d as i64).collect();
    let descr = array.dtype();
    let dtype = dtype_of(descr.kind(), descr.itemsize()).ok_or_else(|| {
        let name = descr.str().map(|s| s.to_string()).unwrap_or_default();
        format!("{}, numpy dtype '{name}' is not supported", illegal(obj))
    })?;
    let native = if descr.is_native_byteorder() == Some(false) {
        obj.call_method1("astype", (dtype.numpy_name(),))
            .map_err(|e| format!("cannot convert byte order: {e}"))?
    } else {
        obj.clone()
    };
    let contiguous = if native
        .cast::<PyUntypedArray>()
        .is_ok_and(PyUntypedArrayMethods::is_c_contiguous)
    {
        native
    } else {
        numpy_fn(obj.py(), &ASCONTIGUOUS, "ascontiguousarray")
            .and_then(|f| f.call1((native,)))
            .map_err(|e| format!("cannot read numpy array: {e}"))?
    };
    let nbytes = crate::tensor::element_count(&shape).unwrap_or(0) * descr.itemsize();
    let fresh = !contiguous.is(obj);
    let raw = numpy_bytes(&contiguous, nbytes, sole || fresh).ok_or_else(|| illegal(obj))?;
    Tensor::from_raw(dtype, shape, raw)
}

/// The `nbytes` of a C-contiguous, native-order array: kept without a copy only when `sole` (no one else references
/// the array) and the array owns its data, is writable and aligned, since anything else could still write to that
/// memory while Rust reads it off the GIL (a module constant, a reused `out=` buffer, a view of one), or it may be
/// immutable (an array over a `bytes` object); copied otherwise.
fn numpy_bytes(contiguous: &Bound<'_, PyAny>, nbytes: usize, sole: bool) -> Option<Bytes> {
    let array = contiguous.cast::<PyUntypedArray>().ok()?;
    if nbytes == 0 {
        return Some(Bytes::new());
    }
    // SAFETY: `array` is a C-contiguous, native-order numpy array with `nbytes` bytes of data, referenced here (its
    // buffer stays alive and unmoved while attached).
    let (data, flags) = unsafe {
        let fields = &(*array.as_array_ptr()).fields;
        (fields.data as *const u8, fields.flags)
    };
    let kept = NPY_ARRAY_WRITEABLE | NPY_ARRAY_ALIGNED | NPY_ARRAY_OWNDATA;
    if sole && flags & kept == kept {
        Some(Bytes::from_owner(NumpyMemory {
            _array: contiguous.clone().unbind(),
            data,
            len: nbytes,
        }))
    } else {
        // SAFETY: as above; copied at once.
        Some(Bytes::copy_from_slice(unsafe {
            std::slice::from_raw_parts(data, nbytes)
        }))
    }
}

/// Converts a stage's output value into a tensor with MindSpore's rules: numpy arrays and scalars, objects
/// with `.asnumpy()`, bytes, str, bool, int (int64), float (float64); anything else is an illegal result. Arrays are
/// copied; see `stage_output_to_tensor` for the one place that may keep them.
pub fn py_to_tensor(obj: &Bound<'_, PyAny>) -> Result<Tensor, String> {
    to_tensor(obj, false)
}

/// `py_to_tensor` for one value a stage returned, which the caller holds `held` references to (the returned tuple
/// or list, and its own): an array nothing else references becomes the tensor without a copy.
pub fn stage_output_to_tensor(obj: &Bound<'_, PyAny>, held: isize) -> Result<Tensor, String> {
    // SAFETY: `obj` is a live object and we are attached; reading its reference count has no side effect.
    let references = unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) };
    to_tensor(obj, references <= held)
}

fn to_tensor(obj: &Bound<'_, PyAny>, sole: bool) -> Result<Tensor, String> {
    let py = obj.py();
    if obj.is_instance_of::<PyUntypedArray>() {
        return numpy_to_tensor(obj, sole);
    }
    if obj.is_instance_of::<PyBool>() {
        let v: bool = obj.extract().map_err(|e: PyErr| e.to_string())?;
        return Tensor::from_values(vec![], &[v]);
    }
    if obj.is_instance_of::<PyInt>() {
        let v: i64 = obj
            .extract()
            .map_err(|e: PyErr| format!("int result does not fit int64: {e}"))?;
        return Tensor::from_values(vec![], &[v]);
    }
    if obj.is_instance_of::<PyFloat>() {
        let v: f64 = obj.extract().map_err(|e: PyErr| e.to_string())?;
        return Tensor::from_values(vec![], &[v]);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Tensor::scalar_string(s.to_str().map_err(|e| e.to_string())?));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Tensor::scalar_bytes(Bytes::copy_from_slice(b.as_bytes())));
    }
    let generic = NP_GENERIC.import(py, "numpy", "generic").map_err(|e| e.to_string())?;
    if obj.is_instance(generic).unwrap_or(false) {
        // A numpy scalar is a 0-d tensor of its dtype.
        let array = numpy_fn(py, &ASARRAY, "asarray")
            .and_then(|f| f.call1((obj,)))
            .map_err(|e| e.to_string())?;
        return numpy_to_tensor(&array, true);
    }
    if obj.hasattr("asnumpy").unwrap_or(false) {
        let array = obj
            .call_method0("asnumpy")
            .map_err(|e| format!("asnumpy() failed: {e}"))?;
        if array.is_instance_of::<PyUntypedArray>() {
            return numpy_to_tensor(&array, false);
        }
    }
    Err(illegal(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_kind_mapping() {
        assert_eq!(dtype_of(b'f', 2), Some(DType::Float16));
        assert_eq!(dtype_of(b'b', 1), Some(DType::Bool));
        assert_eq!(dtype_of(b'u', 8), Some(DType::UInt64));
        assert_eq!(dtype_of(b'c', 8), None);
        assert_eq!(dtype_of(b'O', 8), None);
    }
}
