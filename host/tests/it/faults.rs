//! Harness shared by the fleet tests (`failover`, `health`, `admission`,
//! `aliases`): a config with replicas, requests that report a failure instead
//! of panicking (for many clients at once), raw HTTP from a chosen loopback
//! address (fairness is keyed by client address), the status document, and
//! checks of how a stream ended.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// One backend of a config: its id, its simulator and the extra fields of its
/// table form (`parallel = 4`), or `""` for the string form.
pub struct Conn<'a> {
    /// The connection id (`b1`).
    pub id: &'a str,
    /// Its URL.
    pub url: String,
    /// Fields of the table form beside `url`, or `""`.
    pub extra: &'a str,
}

impl<'a> Conn<'a> {
    /// `id = "URL"`.
    pub fn new(id: &'a str, sim: &SimHandle) -> Conn<'a> {
        Conn {
            id,
            url: sim.url(),
            extra: "",
        }
    }

    /// `id = { url = "URL", EXTRA }`.
    pub fn with(id: &'a str, sim: &SimHandle, extra: &'a str) -> Conn<'a> {
        Conn {
            id,
            url: sim.url(),
            extra,
        }
    }
}

/// A `llamagate.toml`: `top` (top-level keys), the connections, `[policy]`
/// with `policy` (its keys), then `tables` (more `[sections]`). Probes every
/// 60 s unless `top` says otherwise, and no file watching.
pub fn toml(top: &str, conns: &[Conn], policy: &str, tables: &str) -> String {
    let mut t = String::new();
    t.push_str(top);
    t.push('\n');
    if !top.contains("probe_interval") {
        t.push_str("probe_interval = \"60s\"\n");
    }
    t.push_str("watch = false\n[connections]\n");
    for c in conns {
        if c.extra.is_empty() {
            t.push_str(&format!("{} = \"{}\"\n", c.id, c.url));
        } else {
            t.push_str(&format!(
                "{} = {{ url = \"{}\", {} }}\n",
                c.id, c.url, c.extra
            ));
        }
    }
    t.push_str("[policy]\n");
    t.push_str(policy);
    t.push('\n');
    t.push_str(tables);
    t.push('\n');
    t
}

/// A simulator serving `models`, with `loaded` loaded, otherwise as `base`.
pub async fn sim_with(models: &[&str], loaded: &[&str], base: SimOptions) -> SimHandle {
    sim::spawn(SimOptions {
        models: models.iter().map(|m| m.to_string()).collect(),
        loaded: loaded.iter().map(|m| m.to_string()).collect(),
        ..base
    })
    .await
    .unwrap()
}

/// A simulator serving llama3.2, loaded.
pub async fn warm() -> SimHandle {
    sim_with(&["llama3.2"], &["llama3.2"], SimOptions::default()).await
}

/// A non-streamed `/api/chat` body for llama3.2 saying `text`.
pub fn chat_body(text: &str) -> Value {
    json!({"model":"llama3.2","messages":[{"role":"user","content":text}],"stream":false})
}

/// A streamed `/api/chat` body for llama3.2 saying `text`.
pub fn chat_stream_body(text: &str) -> Value {
    json!({"model":"llama3.2","messages":[{"role":"user","content":text}]})
}

/// A `/v1/chat/completions` body for llama3.2 saying `text`.
pub fn openai_body(text: &str, stream: bool) -> Value {
    json!({"model":"llama3.2","stream":stream,"messages":[{"role":"user","content":text}]})
}

/// The `/api/chat` and `/v1/chat/completions` requests `sim` received whose
/// last message says `text`.
pub fn saying(sim: &SimHandle, text: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| {
            r.json()["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["content"] == text)
        })
        .count()
}

/// Requests `sim` received for `path`.
pub fn received(sim: &SimHandle, path: &str) -> usize {
    sim.requests().iter().filter(|r| r.path == path).count()
}

/// Sends a request; `Err` says what went wrong (no answer in 20 s, a broken
/// connection, a body that broke) instead of panicking.
pub async fn try_send(method: Method, url: &str, body: &Value) -> Result<Reply, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .map_err(|_| "no answer within 20 s".to_string())?
        .map_err(|e| format!("request failed: {e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .map_err(|_| "body not finished within 20 s".to_string())?
        .map_err(|e| format!("body broke: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// The proxy's `/llamagate/status` document.
pub async fn status(proxy: &Proxy) -> Value {
    let r = get(&format!("{}/llamagate/status", proxy.admin_url())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The status entry of backend `id`.
pub async fn backend_status(proxy: &Proxy, id: &str) -> Value {
    let s = status(proxy).await;
    s["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["id"] == id).cloned())
        .unwrap_or_else(|| panic!("no backend {id} on status: {s}"))
}

/// Waits (up to `within`) until backend `id` shows `state`; returns its entry.
pub async fn wait_state(proxy: &Proxy, id: &str, state: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let b = backend_status(proxy, id).await;
        if b["state"] == state {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {state:?} within {within:?}; status says {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 5 s) until `cond`.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How a streamed answer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// With its last frame (`done:true`, `data: [DONE]`).
    Complete,
    /// With llamagate's error frame and no last frame; the error's text.
    Cut(String),
}

/// How an NDJSON body ended; `Err` if it is neither complete nor cut with the
/// error line (or a line is not JSON).
pub fn ndjson_end(text: &str) -> Result<Ended, String> {
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("line {l:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let last = lines.last().ok_or("no line at all")?;
    let done = lines.iter().filter(|l| l["done"] == true).count();
    match last["error"].as_str() {
        Some(e) if done == 0 && !e.is_empty() => Ok(Ended::Cut(e.to_string())),
        None if done == 1 && last["done"] == true => Ok(Ended::Complete),
        _ => Err(format!(
            "neither complete nor cut with an error line: {text}"
        )),
    }
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
        })
        .collect()
}

/// How an OpenAI SSE body ended; `Err` if it is neither complete nor cut with
/// the error event.
pub fn sse_end(text: &str) -> Result<Ended, String> {
    let data = sse_data(text);
    let last = data.last().ok_or("no event at all")?;
    let done = data.iter().filter(|d| d.as_str() == "[DONE]").count();
    if last == "[DONE]" && done == 1 {
        return Ok(Ended::Complete);
    }
    let event: Value = serde_json::from_str(last).map_err(|e| format!("{last:?}: {e}"))?;
    match event["error"]["message"].as_str() {
        Some(m) if done == 0 && !m.is_empty() => Ok(Ended::Cut(m.to_string())),
        _ => Err(format!(
            "neither complete nor cut with an error event: {text}"
        )),
    }
}

/// The address the proxy listens on.
pub fn proxy_addr(proxy: &Proxy) -> SocketAddr {
    proxy.url.strip_prefix("http://").unwrap().parse().unwrap()
}

/// An answer read off a raw connection.
#[derive(Debug)]
pub struct RawReply {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Opens a connection to `to` from the loopback address `from` (the whole of
/// 127.0.0.0/8 is loopback, so one machine has many client addresses) and
/// writes a `POST path` with `body` and `Connection: close`.
pub async fn raw_open(
    from: IpAddr,
    to: SocketAddr,
    path: &str,
    body: &Value,
) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut tcp = socket.connect(to).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// Reads the whole answer of a connection opened by [`raw_open`] (within 30 s).
pub async fn raw_read(mut tcp: tokio::net::TcpStream) -> RawReply {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut raw))
        .await
        .expect("no complete answer within 30 s")
        .expect("reading the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                value.trim().parse().unwrap(),
            );
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("chunked"));
    if chunked {
        rest = dechunk(&rest);
    }
    RawReply { status, body: rest }
}

/// The payload of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&raw[..eol]).unwrap_or("0");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 4 + size).min(raw.len())..];
    }
}

/// Starts llamagate with `config` and waits (up to 10 s) until its start-up
/// probe has seen the models of backends `ids`: the default policy prefers a
/// replica with the model loaded, so a test that means `b1` to be tried first
/// must not race the probe that tells it so.
pub async fn start_probed(config: &str, ids: &[&str]) -> Proxy {
    let proxy = Proxy::with_config(config, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&proxy).await;
        let seen = ids.iter().all(|id| {
            s["backends"].as_array().is_some_and(|all| {
                all.iter().any(|b| {
                    b["id"] == *id && b["models"].as_array().is_some_and(|m| !m.is_empty())
                })
            })
        });
        if seen {
            return proxy;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the start-up probe never saw {ids:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
