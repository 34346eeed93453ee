//! Recording requests to a JSON-lines file (`--record FILE`), and reading them
//! back for `llamagate plugin test`.
//!
//! One line per request: `{"time_ms", "method", "path", "client", "headers":
//! [[name, value]...], "body"}` where `body` is the body's text (or
//! `body_base64` when it is not UTF-8). The file holds request bodies and
//! credentials (`authorization` headers), so it must be private: it is created
//! with mode 0600, an existing file is re-moded to 0600, and a file that cannot
//! be made private — a symlink, not a regular file, or owned by another user
//! (who could still read it) — stops start-up. Lines are written by a
//! background thread; when the disk falls behind, lines are dropped and counted
//! rather than slowing requests down.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::Context;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

/// One recorded request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// Unix time in milliseconds.
    #[serde(default)]
    pub time_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Client address.
    #[serde(default)]
    pub client: String,
    /// Headers in arrival order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl Recorded {
    /// The body's bytes.
    pub fn body_bytes(&self) -> anyhow::Result<Vec<u8>> {
        match (&self.body, &self.body_base64) {
            (Some(text), _) => Ok(text.as_bytes().to_vec()),
            (None, Some(b64)) => base64_decode(b64).context("body_base64 is not base64"),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// Appends requests to a file from a background thread.
pub struct Recorder {
    lines: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// Opens (appends to) `path`, made private first (see the module docs).
    pub fn open(path: &Path) -> anyhow::Result<Recorder> {
        let file = open_private(path)
            .with_context(|| format!("--record {}: cannot record requests", path.display()))?;
        let (lines, receiver) = sync_channel::<String>(10_000);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("llamagate-record".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                // Write what is queued, then flush, so the file is complete
                // whenever the queue is empty.
                while let Ok(first) = receiver.recv() {
                    let written = std::iter::once(first)
                        .chain(receiver.try_iter())
                        .try_for_each(|line| writeln!(out, "{line}"))
                        .and_then(|_| out.flush());
                    if let Err(e) = written {
                        tracing::error!("recording to {shown} failed: {e}");
                        return;
                    }
                }
            })
            .context("starting the recorder")?;
        Ok(Recorder {
            lines,
            dropped: Arc::default(),
        })
    }

    /// Queues one request; never blocks.
    pub fn record(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        client: SocketAddr,
        body: &[u8],
    ) {
        let (text, b64) = match std::str::from_utf8(body) {
            Ok("") => (None, None),
            Ok(t) => (Some(t.to_string()), None),
            Err(_) => (None, Some(base64_encode(body))),
        };
        let entry = Recorded {
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
            method: method.to_string(),
            path: path.to_string(),
            client: client.to_string(),
            headers: headers
                .iter()
                .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            body: text,
            body_base64: b64,
        };
        let line = serde_json::to_string(&entry).expect("recorded request serialises");
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!("request recorder is behind: {n} requests not recorded");
            }
        }
    }
}

/// Opens `path` for appending, readable and writable by llamagate's user only.
#[cfg(unix)]
fn open_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    // Checked before opening too: opening a FIFO would block until a reader comes.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            !meta.file_type().is_symlink(),
            "it is a symbolic link; give the real file's path"
        );
        anyhow::ensure!(meta.is_file(), "not a regular file");
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // The check above and the open are not atomic: refuse a symlink put in between.
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(
            |e| match e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                true => anyhow::anyhow!("it is a symbolic link; give the real file's path"),
                false => anyhow::Error::new(e).context("opening it"),
            },
        )?;
    let meta = file.metadata().context("reading its metadata")?;
    anyhow::ensure!(meta.is_file(), "not a regular file");
    let me = rustix::process::geteuid().as_raw();
    anyhow::ensure!(
        meta.uid() == me,
        "it belongs to uid {}, not to llamagate's user (uid {me}), who could not make it \
         private: it holds credentials",
        meta.uid()
    );
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("it is mode {mode:o} and cannot be made 0600"))?;
        tracing::warn!(
            "--record {}: was mode {mode:o}, readable by others; made 0600 (it holds credentials)",
            path.display()
        );
    }
    Ok(file)
}

/// Opens `path` for appending (no file modes to check off Unix).
#[cfg(not(unix))]
fn open_private(path: &Path) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

/// Reads a recording; a bad line is an error naming its number.
pub fn read(path: &Path) -> anyhow::Result<Vec<Recorded>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: Recorded = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a recorded request", path.display(), i + 1))?;
        out.push(entry);
    }
    Ok(out)
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.decode(text.trim())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0, 255, 128, 7, 9]] {
            assert_eq!(base64_decode(&base64_encode(data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
