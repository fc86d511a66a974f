//! Log output: rustserve's (and ONNX Runtime's) tracing events on stderr, as text or as JSON lines, and the
//! entry point the Python side logs through so that its lines take the same format.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::OnceLock;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00.000000Z  WARN rustserve::service: message key=value`; colour only on a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields at the top level.
    Json,
}

impl LogFormat {
    pub fn parse(name: &str) -> Option<LogFormat> {
        match name {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The format the first `init_logging` installed; unset until then.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The installed format (text before `init_logging`, when Python prints its lines itself).
pub fn current_format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Routes rustserve's (and ONNX Runtime's) log lines to stderr; `level` is a `RUST_LOG`-style filter, which
/// the `RUST_LOG` environment variable overrides; `format` is "text" or "json". Only the first call has an effect.
#[pyfunction]
#[pyo3(signature = (level = "info", format = "text"))]
pub fn init_logging(level: &str, format: &str) -> PyResult<()> {
    let chosen = LogFormat::parse(format)
        .ok_or_else(|| PyValueError::new_err(format!("log format must be 'text' or 'json', got '{format}'")))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match chosen {
        // Colour only for a person at a terminal: collectors and files get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FORMAT.set(chosen);
    }
    Ok(())
}

/// The format log lines are written in: "text" or "json".
#[pyfunction]
pub fn log_format() -> &'static str {
    current_format().name()
}

/// Logs one line from the Python side (target `rustserve`) through the installed subscriber, so that it takes the
/// chosen format and level filter; `level` is error, warn, info, debug or trace.
#[pyfunction]
pub fn log(level: &str, message: &str) -> PyResult<()> {
    match level {
        "error" => tracing::error!(target: "rustserve", "{message}"),
        "warn" | "warning" => tracing::warn!(target: "rustserve", "{message}"),
        "info" => tracing::info!(target: "rustserve", "{message}"),
        "debug" => tracing::debug!(target: "rustserve", "{message}"),
        "trace" => tracing::trace!(target: "rustserve", "{message}"),
        _ => {
            return Err(PyValueError::new_err(format!(
                "log level must be error, warn, info, debug or trace, got '{level}'"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn formats_round_trip_by_name() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::parse(format.name()), Some(format));
        }
        assert_eq!(LogFormat::parse("JSON"), None);
        assert_eq!(LogFormat::parse(""), None);
    }
}
