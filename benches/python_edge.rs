//! Criterion benches of the Python edge: numpy <-> `Tensor` conversion (what every Python stage pays per input and
//! output) and the GIL-thread round trip (dispatcher -> GIL thread -> identity function -> answer).
//!
//! Embeds CPython, so it needs the interpreter's library and numpy: `make bench` sets `LD_LIBRARY_PATH` and
//! `PYTHONPATH` as `make test-rust` does.

use _rustserve::dispatch::Dispatcher;
use _rustserve::pipeline::{FunctionCall, ModelSet, PythonStages};
use _rustserve::python::convert::{py_to_tensor, tensor_to_py};
use _rustserve::python::gil_thread::GilThread;
use _rustserve::spec::FunctionId;
use _rustserve::tensor::Tensor;
use criterion::{Criterion, criterion_group, criterion_main};
use pyo3::prelude::*;
use std::sync::Arc;

fn f32_tensor(shape: &[i64]) -> Tensor {
    let count: i64 = shape.iter().product();
    let values: Vec<f32> = (0..count).map(|i| (i % 256) as u8).map(f32::from).collect();
    Tensor::from_values(shape.to_vec(), &values).expect("values match the shape")
}

fn bench_convert(c: &mut Criterion) {
    let mut group = c.benchmark_group("numpy <-> tensor");
    for (label, shape) in [("[2,2] f32", vec![2, 2]), ("[3,224,224] f32", vec![3, 224, 224])] {
        let tensor = f32_tensor(&shape);
        Python::attach(|py| {
            group.bench_function(format!("tensor -> numpy {label}"), |b| {
                b.iter(|| tensor_to_py(py, &tensor).expect("converts"));
            });
            let array = tensor_to_py(py, &tensor).expect("converts");
            group.bench_function(format!("numpy -> tensor {label}"), |b| {
                b.iter(|| py_to_tensor(&array).expect("converts"));
            });
        });
    }
    group.finish();
}

fn bench_gil_round_trip(c: &mut Criterion) {
    let executor = Arc::new(GilThread::spawn().expect("GIL thread starts"));
    let identity = Python::attach(|py| {
        let function = py.eval(c"lambda x: x", None, None).expect("a lambda").unbind();
        executor.add_function(function)
    });
    let dispatcher = Dispatcher::new(executor.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let input = f32_tensor(&[2, 2]);
    let call = |function: FunctionId| FunctionCall {
        function,
        name: "bench.identity".into(),
        tag: "identity".into(),
        method: "bench".into(),
        stage_index: 1,
        outputs_count: 1,
        batch_size: None,
        instances: vec![vec![input.clone()]],
        models: Arc::new(ModelSet::default()),
    };
    c.bench_function("GIL-thread round trip, identity stage, one [2,2] f32", |b| {
        b.iter(|| {
            let results = runtime.block_on(dispatcher.submit(call(identity)));
            assert!(results[0].is_ok(), "{:?}", results[0]);
        });
    });
    dispatcher.shutdown();
    executor.shutdown();
}

fn python() -> Criterion {
    Python::initialize();
    Criterion::default()
}

criterion_group! {
    name = benches;
    config = python();
    targets = bench_convert, bench_gil_round_trip
}
criterion_main!(benches);
