//! A real browser for tests: Debian's headless `chromium`, driven over the
//! DevTools protocol (a small WebSocket client below: text frames only, as
//! the protocol needs). Every wait is bounded; the browser's whole process
//! group is killed on drop and its fresh profile removed.
//!
//! Without `/usr/bin/chromium` (or `LLAMAGATE_CHROMIUM`) a test that needs it
//! fails, saying how to install it, unless `LLAMAGATE_SKIP_BROWSER=1`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one DevTools answer may take.
const ANSWER: Duration = Duration::from_secs(20);

/// The chromium to run, or `None` when the caller asked to skip browser
/// tests; panics (the test fails) when there is none.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("LLAMAGATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("LLAMAGATE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("LLAMAGATE_SKIP_BROWSER=1: not testing in a browser");
        return None;
    }
    panic!(
        "this test runs the status page in headless chromium, and {} is missing: install it \
         (Debian: `apt-get update && apt-get install -y --no-install-recommends chromium`; \
         `bash .ci/test` does) or point LLAMAGATE_CHROMIUM at one; \
         LLAMAGATE_SKIP_BROWSER=1 skips these tests",
        path.display()
    );
}

/// A headless chromium with one page open, driven over DevTools.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    page: Ws,
    next: u64,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    /// Starts `chromium` (from [`chromium`]) with a 1280×1000 window and a
    /// fresh profile, and attaches to its first page.
    pub async fn start(chromium: &std::path::Path) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "llamagate-chromium-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    "--mute-audio",
                    "--window-size=1280,1000",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                // Its own process group, so that drop ends its helpers too.
                .process_group(0)
                .spawn()
                .expect("starting chromium")
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let browser_ws = tokio::task::spawn_blocking(move || rx.recv_timeout(ANSWER))
            .await
            .unwrap();
        let mut browser = Browser {
            child,
            profile,
            page: Ws::dead(),
            next: 0,
            logs,
        };
        let Ok(browser_ws) = browser_ws else {
            panic!(
                "chromium printed no DevTools address within {ANSWER:?}:\n{}",
                browser.logs()
            );
        };
        // http://127.0.0.1:PORT/json/list names the open page's socket.
        let port = browser_ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("odd DevTools address {browser_ws}"))
            .to_string();
        let deadline = tokio::time::Instant::now() + ANSWER;
        let page_ws = loop {
            let list = crate::common::get(&format!("http://{port}/json/list")).await;
            let found = list.json().as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
            });
            if let Some(url) = found {
                break url;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromium lists no page: {}",
                list.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        browser.page = Ws::connect(&page_ws).await;
        browser
    }

    /// What chromium printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends one DevTools command and returns its result (events are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let message = json!({"id": id, "method": method, "params": params});
        self.page.send(&message.to_string()).await;
        let deadline = tokio::time::Instant::now() + ANSWER;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = tokio::time::timeout(left, self.page.receive())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {ANSWER:?}"));
            let answer: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("DevTools sent non-JSON ({e}): {text}"));
            if answer["id"] != id {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("{method} failed: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// Opens `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "loading {url}: {r}");
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (at most `limit`) until `expression` is truthy; returns its
    /// value. On time-out, fails showing what the page says.
    pub async fn wait_for(&mut self, what: &str, expression: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        // While the page loads, its elements may not be there yet.
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        );
        loop {
            let v = self.eval(&guarded).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "{what}: not seen within {limit:?} ({expression} = {v}); the page says:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window, saved at `path` (its folder made).
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot in base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser and its renderer, GPU and zygote helpers.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A number that differs between browsers of one test process.
fn rand_suffix() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The client side of a WebSocket (RFC 6455): text messages, masked frames out.
struct Ws {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Ws {
    fn dead() -> Ws {
        Ws {
            stream: None,
            buf: Vec::new(),
        }
    }

    async fn connect(url: &str) -> Ws {
        let rest = url
            .strip_prefix("ws://")
            .unwrap_or_else(|| panic!("not a ws:// URL: {url}"));
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = tokio::time::timeout(ANSWER, TcpStream::connect(host))
            .await
            .expect("connecting to DevTools timed out")
            .expect("connecting to DevTools");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: bGxhbWFnYXRlLXRlc3QtaQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut ws = Ws {
            stream: Some(stream),
            buf: Vec::new(),
        };
        let head = tokio::time::timeout(ANSWER, async {
            loop {
                if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
                    ws.buf.drain(..end + 4);
                    return head;
                }
                ws.fill().await;
            }
        })
        .await
        .expect("no WebSocket handshake from DevTools");
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "DevTools refused the WebSocket: {head}"
        );
        ws
    }

    /// Reads more bytes into the buffer; panics when the socket closed.
    async fn fill(&mut self) {
        // Into the heap buffer: a large array would live in the future itself.
        self.buf.reserve(64 * 1024);
        let n = self
            .stream
            .as_mut()
            .expect("no DevTools socket")
            .read_buf(&mut self.buf)
            .await
            .expect("reading from DevTools");
        assert!(n > 0, "DevTools closed its socket");
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.drain(..n).collect()
    }

    async fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8]; // FIN, text
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x6c, 0x6c, 0x67, 0x74];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let stream = self.stream.as_mut().expect("no DevTools socket");
        tokio::time::timeout(ANSWER, stream.write_all(&frame))
            .await
            .expect("writing to DevTools timed out")
            .expect("writing to DevTools");
    }

    /// The next text message (continuation frames joined; pings answered).
    async fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let head = self.take(2).await;
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let masked = head[1] & 0x80 != 0;
            let len = match head[1] & 0x7f {
                126 => u16::from_be_bytes(self.take(2).await.try_into().unwrap()) as usize,
                127 => u64::from_be_bytes(self.take(8).await.try_into().unwrap()) as usize,
                n => n as usize,
            };
            let mask = match masked {
                true => Some(self.take(4).await),
                false => None,
            };
            let mut payload = self.take(len).await;
            if let Some(mask) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match opcode {
                0x0 | 0x1 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return String::from_utf8(message).expect("DevTools sent non-UTF-8 text");
                    }
                }
                0x8 => panic!("DevTools closed the WebSocket"),
                0x9 => {
                    // A ping: answer with a pong carrying its payload.
                    let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    let stream = self.stream.as_mut().unwrap();
                    let _ = stream.write_all(&pong).await;
                }
                _ => {}
            }
        }
    }
}
