//! Where log lines go: standard error, with the access log's lines batched.
//!
//! A line per request written with its own `write` costs a system call per
//! request, a measurable share of a small request's CPU. Access-log lines
//! (target [`ACCESS_TARGET`]) are therefore appended to a buffer that is
//! written out whole when it reaches [`BATCH_BYTES`], every [`FLUSH_EVERY`]
//! (by a background thread), and when the process ends ([`flush`]). Every
//! other line is written at once, so a warning is never held back; an access
//! line may appear up to [`FLUSH_EVERY`] after lines logged later.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The target of access-log lines.
pub const ACCESS_TARGET: &str = "llamagate::access";

/// A batch is written out once it holds this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;

/// The longest an access-log line waits in the batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

static BATCH: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The log's writer: pass to `tracing_subscriber::fmt().with_writer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

/// One line's writer, chosen by the line's target.
pub enum LineWriter {
    /// Straight to standard error.
    Direct,
    /// Into the access-log batch.
    Batched,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Direct
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        if meta.target() == ACCESS_TARGET {
            LineWriter::Batched
        } else {
            LineWriter::Direct
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LineWriter::Direct => std::io::stderr().write(buf),
            LineWriter::Batched => {
                let mut batch = BATCH.lock().unwrap_or_else(|e| e.into_inner());
                batch.extend_from_slice(buf);
                if batch.len() >= BATCH_BYTES {
                    write_out(&mut batch);
                }
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LineWriter::Direct => std::io::stderr().flush(),
            LineWriter::Batched => Ok(()),
        }
    }
}

/// Writes the batch out under its lock (so batches keep their order). A
/// failing standard error loses the batch rather than growing it forever.
fn write_out(batch: &mut Vec<u8>) {
    let _ = std::io::stderr().write_all(batch);
    batch.clear();
    if batch.capacity() > 4 * BATCH_BYTES {
        batch.shrink_to(BATCH_BYTES);
    }
}

/// Writes out what the batch holds.
pub fn flush() {
    let mut batch = BATCH.lock().unwrap_or_else(|e| e.into_inner());
    if !batch.is_empty() {
        write_out(&mut batch);
    }
}

/// Starts the thread that flushes the batch every [`FLUSH_EVERY`].
pub fn start_flusher() {
    let _ = std::thread::Builder::new()
        .name("llamagate-log".into())
        .spawn(|| loop {
            std::thread::sleep(FLUSH_EVERY);
            flush();
        });
}
