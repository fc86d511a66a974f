//! Closed-loop gRPC load generator for `benches/compare.py`: `concurrency` tasks each send the same MindSpore
//! `PredictRequest` (read from a file of its protobuf bytes) back to back for `duration` seconds, then it prints one
//! JSON line with the request count, req/s and latency percentiles. Any server speaking `MSService.Predict` works
//! (rustserve, MindSpore Serving, the grpcio baseline of compare.py).
//!
//! A Rust client instead of a grpcio loop: a Python client costs ~350 µs of its own CPU per call on our 2-core
//! machine (toolchain.md), so it would measure itself, not the server. Runs on one OS thread (tokio current_thread),
//! like `wrk -t1` for HTTP, so the load generator never takes more than one core from the server.
//!
//! Built by `cargo bench --bench grpc_load --no-run` (bench profile = optimised); run without arguments it prints its
//! usage and exits 0, so a plain `cargo bench` passes through it.
//!
//! ```text
//! grpc_load --addr http://127.0.0.1:5500 --request req.bin --concurrency 16 --duration 10 [--warmup 2]
//!           [--connections 1]
//! ```

// Request counts and ranks stay far below 2^52, so usize -> f64 is exact here.
#![allow(clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use _rustserve::proto::ms::PredictRequest;
use _rustserve::proto::ms::ms_service_client::MsServiceClient;
use prost::Message;
use tonic::transport::Channel;

const USAGE: &str = "usage: grpc_load --addr URL --request FILE [--concurrency N] [--duration S] [--warmup S] \
                     [--connections K]";

struct Args {
    addr: String,
    request: String,
    concurrency: usize,
    duration: f64,
    warmup: f64,
    connections: usize,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        addr: String::new(),
        request: String::new(),
        concurrency: 1,
        duration: 5.0,
        warmup: 1.0,
        connections: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench`; ignore flags without a value that we do not know.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--addr" => args.addr = value,
            "--request" => args.request = value,
            "--concurrency" => args.concurrency = number(&value)? as usize,
            "--duration" => args.duration = number(&value)?,
            "--warmup" => args.warmup = number(&value)?,
            "--connections" => args.connections = number(&value)? as usize,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if args.addr.is_empty() || args.request.is_empty() {
        return Ok(None);
    }
    args.concurrency = args.concurrency.max(1);
    args.connections = args.connections.clamp(1, args.concurrency);
    Ok(Some(args))
}

/// Per-task result: latencies (µs) of the measured calls, errors, and the first error text.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    mut client: MsServiceClient<Channel>,
    request: PredictRequest,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let start = Instant::now();
        if start >= end {
            return tally;
        }
        let outcome = client.predict(request.clone()).await;
        let done = Instant::now();
        let error = match outcome {
            Ok(reply) => reply
                .into_inner()
                .error_msg
                .iter()
                .find(|e| e.error_code != 0)
                .map(|e| String::from_utf8_lossy(&e.error_msg).into_owned()),
            Err(status) => Some(status.to_string()),
        };
        if start < measure_from || done > end {
            continue;
        }
        match error {
            None => tally
                .latencies_us
                .push(u32::try_from(done.duration_since(start).as_micros()).unwrap_or(u32::MAX)),
            Some(text) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(text);
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)])
}

async fn run(args: Args) -> Result<String, String> {
    let bytes = std::fs::read(&args.request).map_err(|e| format!("cannot read {}: {e}", args.request))?;
    let request =
        PredictRequest::decode(bytes.as_slice()).map_err(|e| format!("{}: not a PredictRequest: {e}", args.request))?;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel = Channel::from_shared(args.addr.clone())
            .map_err(|e| format!("bad address {}: {e}", args.addr))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
        channels.push(channel);
    }
    let begin = Instant::now();
    let measure_from = begin + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|k| {
            let client = MsServiceClient::new(channels[k % channels.len()].clone())
                .max_decoding_message_size(512 << 20)
                .max_encoding_message_size(512 << 20);
            tokio::spawn(worker(client, request.clone(), measure_from, end))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let tally = task.await.map_err(|e| format!("load task failed: {e}"))?;
        latencies.extend(tally.latencies_us);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    latencies.sort_unstable();
    let ok = latencies.len() as f64;
    let text = serde_json::json!({
        "requests": latencies.len(),
        "errors": errors,
        "first_error": first_error,
        "seconds": args.duration,
        "rps": ok / args.duration,
        "p50_us": percentile(&latencies, 50.0),
        "p90_us": percentile(&latencies, 90.0),
        "p99_us": percentile(&latencies, 99.0),
        "mean_us": if latencies.is_empty() { f64::NAN } else { latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / ok },
        "concurrency": args.concurrency,
        "connections": args.connections,
    });
    Ok(text.to_string())
}

fn main() {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            eprintln!("{USAGE}");
            return;
        }
        Err(text) => {
            eprintln!("{text}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run(args)) {
        Ok(line) => println!("{line}"),
        Err(text) => {
            eprintln!("grpc_load: {text}");
            std::process::exit(1);
        }
    }
}
