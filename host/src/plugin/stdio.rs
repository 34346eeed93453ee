//! A guest's stdout and stderr, as lines in llamagate's log.
//!
//! `println!`, Python's `print` and a Rust panic's message arrive here. Each
//! complete line becomes one log event naming the plugin (stdout at `info`,
//! stderr at `warn`), cut at [`MAX_LINE`] bytes; at most [`LINES_PER_WINDOW`]
//! lines per plugin and stream are logged every [`WINDOW`], the rest counted and the count
//! given with the next line logged, so a plugin that prints on every request
//! cannot flood the log.
//! Writing never waits: the stream is always ready, so a guest's "blocking"
//! write completes in one step on whatever thread runs the call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

/// Longest line logged; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 1024;

/// Lines per plugin and stream logged in each [`WINDOW`] (a Rust panic is
/// three lines).
pub const LINES_PER_WINDOW: u32 = 20;

/// How often the line budget starts afresh.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The lines a plugin's stream may still log in this window.
struct Budget {
    since: Instant,
    used: u32,
    held_back: u64,
}

/// Which of the guest's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// stdout: logged at `info`.
    Stdout,
    /// stderr: logged at `warn`.
    Stderr,
}

/// The stdout or stderr of one plugin's instances.
/// Clones share one budget: make one per plugin and channel.
#[derive(Clone)]
pub struct GuestOutput {
    plugin: Arc<str>,
    channel: Channel,
    budget: Arc<Mutex<Budget>>,
}

impl GuestOutput {
    /// `channel` of plugin `plugin`.
    pub fn new(plugin: Arc<str>, channel: Channel) -> GuestOutput {
        let budget = Budget {
            since: Instant::now(),
            used: 0,
            held_back: 0,
        };
        GuestOutput {
            plugin,
            channel,
            budget: Arc::new(Mutex::new(budget)),
        }
    }

    /// `Some(lines held back before this one)` if this line may be logged.
    fn admit(&self) -> Option<u64> {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if budget.since.elapsed() >= WINDOW {
            budget.since = Instant::now();
            budget.used = 0;
        }
        if budget.used >= LINES_PER_WINDOW {
            budget.held_back += 1;
            return None;
        }
        budget.used += 1;
        Some(std::mem::take(&mut budget.held_back))
    }

    fn emit(&self, line: &[u8]) {
        let Some(held_back) = self.admit() else {
            return;
        };
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let plugin = &*self.plugin;
        match (self.channel, held_back) {
            (Channel::Stdout, 0) => tracing::info!(plugin, "stdout: {text}"),
            (Channel::Stdout, n) => {
                tracing::info!(plugin, held_back = n, "stdout: {text}")
            }
            (Channel::Stderr, 0) => tracing::warn!(plugin, "stderr: {text}"),
            (Channel::Stderr, n) => {
                tracing::warn!(plugin, held_back = n, "stderr: {text}")
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI p1 guests use this; llamagate links p2 only.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Lines {
            out: self.clone(),
            line: Vec::new(),
            cut: false,
        })
    }
}

/// One open stream: the line being written so far.
struct Lines {
    out: GuestOutput,
    line: Vec<u8>,
    /// The current line passed [`MAX_LINE`] and was already logged.
    cut: bool,
}

impl Lines {
    fn take(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            if !self.cut {
                let room = MAX_LINE - self.line.len();
                self.line.extend_from_slice(&body[..body.len().min(room)]);
                if self.line.len() == MAX_LINE && (body.len() > room || !ends) {
                    self.out.emit(&self.line);
                    self.line.clear();
                    self.cut = true;
                }
            }
            if ends {
                if !self.cut {
                    self.out.emit(&self.line);
                }
                self.line.clear();
                self.cut = false;
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.line.is_empty() && !self.cut {
            self.out.emit(&self.line);
        }
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for Lines {
    async fn ready(&mut self) {}
}

impl OutputStream for Lines {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Lines {
        Lines {
            out: GuestOutput::new("t".into(), Channel::Stdout),
            line: Vec::new(),
            cut: false,
        }
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_dropped() {
        let mut l = lines();
        l.take(&vec![b'x'; MAX_LINE + 10]);
        assert!(l.cut && l.line.is_empty());
        l.take(b"yyy\nnext");
        assert!(!l.cut);
        assert_eq!(l.line, b"next");
    }

    #[test]
    fn the_budget_holds_back_a_flood_and_counts_it() {
        let out = GuestOutput::new("t".into(), Channel::Stderr);
        let logged = (0..LINES_PER_WINDOW + 5)
            .filter(|_| out.admit().is_some())
            .count();
        assert_eq!(logged, LINES_PER_WINDOW as usize);
        out.budget.lock().unwrap().since -= WINDOW;
        assert_eq!(out.admit(), Some(5));
    }

    #[test]
    fn lines_split_across_writes_are_joined() {
        let mut l = lines();
        l.take(b"hel");
        l.take(b"lo\nwor");
        assert_eq!(l.line, b"wor");
    }
}
