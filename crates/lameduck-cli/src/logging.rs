//! Log output: plain or one JSON object per line, on stderr.
//!
//! Logging must never stop the service. stderr may be a pipe whose reader
//! died (a log shipper that crashed, `| head`), or one nobody reads fast
//! enough. So lines go through a bounded queue to a writer thread of their
//! own: a full queue drops the line instead of blocking the task that logs,
//! and a failed write drops it instead of failing (tracing-subscriber would
//! report its own write error with `eprintln!`, which panics on a broken
//! pipe, in whatever task was logging: the signal task, once). Dropped
//! lines are counted for `/metrics`.

use std::{
    io::{self, IsTerminal, Write},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::cli::{LogArgs, LogFormat};

/// Lines queued for the writer thread before new ones are dropped: about a
/// second of a busy service's access log, and a few MiB at most.
const QUEUED_LINES: usize = 16_384;

/// Lines the writer thread could not write (stderr closed or failing).
static FAILED_WRITES: AtomicU64 = AtomicU64::new(0);
/// Lines dropped because the queue was full (stderr blocked).
static QUEUE_FULL: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines that were not written, for any reason, since the start.
pub(crate) fn dropped_lines() -> u64 {
    let full = QUEUE_FULL.get().map_or(0, |c| c.dropped_lines() as u64);
    FAILED_WRITES.load(Ordering::Relaxed) + full
}

/// stderr, where a failed write drops the line and counts it.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(buf).is_err() {
            FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Installs the logger. The guard flushes queued lines when dropped (for at
/// most a second, when stderr is blocked): hold it until the process ends.
pub(crate) fn init(args: &LogArgs) -> anyhow::Result<WorkerGuard> {
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("lameduck-log")
        .finish(Stderr);
    let _ = QUEUE_FULL.set(writer.error_counter());
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(io::stderr().is_terminal())
        .log_internal_errors(false);
    let lines = match args.log_format {
        LogFormat::Plain => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            // With debug logging (or span export), the `request` span's
            // `request_id` and `trace_id` on every line of a request.
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let spans = args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(crate::otlp::layer)
        .transpose()?;
    let installed = match spans {
        // The log filter is the lines' own: an exported request span (info)
        // is made whatever `--log-level` lets through.
        Some(spans) => tracing_subscriber::registry()
            .with(lines.with_filter(filter))
            .with(spans.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
            .try_init(),
        // One global filter, as before span export existed: a disabled
        // span or event is turned off at its callsite.
        None => tracing_subscriber::registry()
            .with(lines)
            .with(filter)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// Prints an error line on stderr, ignoring a stderr that is gone
/// (`eprintln!` would panic).
pub(crate) fn error_line(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "{message}");
}
