//! Client-side limits: slowloris headers, idle keep-alive connections, slow
//! bodies, and the connection cap at the descriptor limit, over raw sockets.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

fn addr(proxy: &Proxy) -> SocketAddr {
    proxy.url.trim_start_matches("http://").parse().unwrap()
}

fn proxy_with(toml: &str, backend: &SimHandle) -> Proxy {
    let route = format!("llama3.2={}", backend.url());
    Proxy::with_config(toml, &["--proxy", &route])
}

/// Connects to `to`, from `from` when given.
async fn connect(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    match from {
        None => TcpStream::connect(to).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(to).await
        }
    }
}

/// Reads until the peer closes; `Some(bytes read)` if it closed (or reset)
/// within `within`, `None` if the connection is still open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(seen)
}

/// Reads one response (headers, then a `content-length` body); returns its
/// status and body.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if data.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]);
                    return (status, body.into_owned());
                }
            }
            let n = stream.read(&mut buf).await.expect("reading a response");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&data)
            );
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no response within 20 s")
}

const VERSION_REQUEST: &[u8] = b"GET /api/version HTTP/1.1\r\nhost: llamagate\r\n\r\n";

/// A slowloris connection: headers that never end, one byte per `interval`.
/// Resolves to when (since `started`) the server closed it, or `None` if it
/// stayed open for 10 s.
fn slowloris(
    stream: TcpStream,
    interval: Duration,
    started: Instant,
) -> tokio::task::JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        let (mut rx, mut tx) = stream.into_split();
        let writer = async move {
            let head = b"POST /api/chat HTTP/1.1\r\nhost: llamagate\r\nx-pad: ";
            for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if tx.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(interval).await;
            }
            std::future::pending::<()>().await;
        };
        let closed = async {
            let mut buf = [0u8; 1024];
            while let Ok(n) = rx.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            _ = writer => unreachable!(),
            r = tokio::time::timeout(Duration::from_secs(10), closed) => r.ok().map(|_| started.elapsed()),
        }
    })
}

fn chat() -> serde_json::Value {
    json!({"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn slowloris_connections_are_closed_by_the_header_timeout() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = proxy_with("header_timeout = \"1s\"\n", &sim);
    let to = addr(&proxy);
    let started = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..100 {
        let stream = connect(to, None).await.unwrap();
        loris.push(slowloris(stream, Duration::from_millis(300), started));
    }
    // Normal requests keep working meanwhile.
    for _ in 0..10 {
        let reply = post(&format!("{}/api/chat", proxy.url), &chat()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in loris {
        let closed_after = task.await.unwrap().expect("not closed within 10 s");
        assert!(
            closed_after < Duration::from_secs(5),
            "a slowloris connection stayed open for {closed_after:?} with header_timeout = 1s"
        );
        assert!(
            closed_after >= Duration::from_millis(900),
            "closed too early: {closed_after:?}"
        );
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_close_but_silent_streams_do_not() {
    let sim = sim::spawn(SimOptions {
        models: vec!["llama3.2".into()],
        chunks: 1,
        chunk_delay: Duration::from_millis(3500),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let proxy = proxy_with("header_timeout = \"1s\"\nidle_timeout = \"3s\"\n", &sim);
    let to = addr(&proxy);

    let keep_alive = async {
        let mut stream = connect(to, None).await.unwrap();
        stream.write_all(VERSION_REQUEST).await.unwrap();
        assert_eq!(read_response(&mut stream).await.0, 200);
        // Longer than header_timeout: a keep-alive connection waiting for its
        // next request is idle, not slow to send headers.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        stream.write_all(VERSION_REQUEST).await.unwrap();
        assert_eq!(read_response(&mut stream).await.0, 200);
        let idle_from = Instant::now();
        let closed = closed_within(&mut stream, Duration::from_secs(8)).await;
        let after = idle_from.elapsed();
        assert!(
            closed.is_some(),
            "an idle keep-alive connection stayed open with idle_timeout = 3s"
        );
        assert!(
            after >= Duration::from_millis(2700) && after < Duration::from_secs(6),
            "closed {after:?} after its last request (idle_timeout = 3s)"
        );
    };
    let stream = async {
        // Silent for 3.5 s between its chunks: longer than idle_timeout.
        let body = json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]});
        let reply = post(&format!("{}/api/chat", proxy.url), &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let lines = reply.lines();
        let last = lines.last().expect("no lines");
        assert_eq!(last["done"], true, "stream cut: {lines:?}");
        assert!(last.get("error").is_none(), "{lines:?}");
    };
    tokio::join!(keep_alive, stream);
}

/// Sends a POST to `path` with `content-length: 1000`, then trickles its body
/// at 25 bytes/s; returns the response and how long it took to come.
async fn trickle(to: SocketAddr, path: &str) -> ((u16, String), Duration) {
    let mut stream = connect(to, None).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: llamagate\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rx, mut tx) = stream.split();
    let writer = async {
        for _ in 0..200 {
            if tx.write_all(b"{\"aa\"").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        std::future::pending::<()>().await;
    };
    let response = tokio::select! {
        _ = writer => unreachable!(),
        response = read_response(&mut rx) => response,
    };
    (response, started.elapsed())
}

#[tokio::test]
async fn slow_bodies_get_408_and_fast_large_ones_pass() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = proxy_with("body_timeout = \"1s\"\nbody_min_rate = \"1KiB\"\n", &sim);
    let to = addr(&proxy);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let blob = format!("/api/blobs/{digest}");

    // Buffered (chat), buffered under /v1 (OpenAI's error shape), streamed (blob).
    let ((chat, chat_took), (openai, openai_took), (upload, upload_took)) = tokio::join!(
        trickle(to, "/api/chat"),
        trickle(to, "/v1/chat/completions"),
        trickle(to, &blob),
    );
    for ((status, body), took, what) in [
        (&chat, chat_took, "chat"),
        (&openai, openai_took, "openai"),
        (&upload, upload_took, "blob upload"),
    ] {
        assert_eq!(*status, 408, "{what}: {body}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{what}: 408 after {took:?} (body_timeout = 1s)"
        );
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        let message = match what {
            "openai" => error["error"]["message"].as_str(),
            _ => error["error"].as_str(),
        };
        assert!(message.unwrap().contains("too slowly"), "{what}: {body}");
    }

    // 20 MiB at once: far past body_timeout's second at 1 KiB/s, yet in pace.
    let prompt = "x".repeat(20 << 20);
    let body = json!({"model": "llama3.2", "stream": false, "prompt": prompt});
    let reply = post(&format!("{}/api/generate", proxy.url), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = send(
        http::Method::POST,
        &format!("{}{blob}", proxy.url),
        &[],
        vec![7u8; 20 << 20],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}

/// A local address that is not loopback (and from which 127.0.0.1 can be
/// reached), to stand for a public client; `None` on a machine without one.
async fn public_address(to: SocketAddr) -> Option<IpAddr> {
    // A UDP "connect" sends nothing: it only asks the kernel for a route.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("198.51.100.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    connect(to, Some(ip)).await.ok()?;
    Some(ip)
}

/// A request on a fresh connection from `from`: the status, or `None` when
/// the connection was closed without a complete answer.
async fn request_from(to: SocketAddr, from: Option<IpAddr>) -> Option<u16> {
    let mut stream = connect(to, from).await.ok()?;
    stream
        .write_all(b"GET /api/version HTTP/1.1\r\nhost: llamagate\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let answer = closed_within(&mut stream, Duration::from_secs(10)).await?;
    let text = String::from_utf8_lossy(&answer);
    text.get(9..12)?.parse().ok()
}

fn prlimit() -> bool {
    let found = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("prlimit (util-linux) is missing: skipping the descriptor-limit test");
    }
    found
}

fn count(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn at_the_cap_new_connections_are_shed_and_loopback_keeps_headroom() {
    if !prlimit() {
        return;
    }
    let sim = backend(&["llama3.2"]).await;
    let config = write_temp("llamagate.toml", "header_timeout = \"60s\"\n");
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start_under(
        &["prlimit", "--nofile=128:128", "--"],
        &["--config", config.to_str().unwrap(), "--proxy", &route],
    );
    // Derived from the descriptor limit: (128 - 64) / 2.
    assert!(
        proxy.logs().contains("max_connections=32"),
        "{}",
        proxy.logs()
    );
    let to = addr(&proxy);
    let Some(public) = public_address(to).await else {
        eprintln!("no non-loopback address to connect from: skipping the cap test");
        return;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 40 idle connections from a "public" address: 32 are kept, 8 shed.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(connect(to, Some(public)).await.unwrap());
    }
    let checks = idle
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(1500)));
    let outcomes = futures_util::future::join_all(checks).await;
    let shed: Vec<_> = outcomes.iter().flatten().collect();
    assert_eq!(
        shed.len(),
        8,
        "40 connections against max_connections = 32 (the rest stayed open)"
    );
    for answer in &shed {
        let text = String::from_utf8_lossy(answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503"),
            "a shed connection got {text:?}"
        );
    }
    // Full for the public, not for the operator on loopback.
    assert_eq!(request_from(to, Some(public)).await.unwrap_or(503), 503);
    let status = get(&format!("{}/llamagate/status", proxy.admin_url())).await;
    assert_eq!(status.status, 200, "{}", status.text());

    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(request_from(to, Some(public)).await, Some(200));
    let logs = proxy.logs();
    assert!(
        (1..=3).contains(&count(&logs, "shedding new connections")),
        "{logs}"
    );
}

#[tokio::test]
async fn out_of_descriptors_backs_off_without_flooding_the_log() {
    if !prlimit() {
        return;
    }
    let sim = backend(&["llama3.2"]).await;
    // A cap the descriptor limit cannot honour: accept itself runs out.
    let config = write_temp(
        "llamagate.toml",
        "header_timeout = \"60s\"\nmax_connections = 1000\n",
    );
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start_under(
        &["prlimit", "--nofile=128:128", "--"],
        &["--config", config.to_str().unwrap(), "--proxy", &route],
    );
    let to = addr(&proxy);
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(connect(to, None).await.unwrap());
    }
    // Well past the limit for two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = proxy.logs();
    let warnings = count(&logs, "accept failed");
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} accept warnings in 2 s:\n{logs}"
    );
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match request_from(to, None).await {
            Some(200) => break,
            other if Instant::now() > deadline => {
                panic!("no recovery after the idle connections closed: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The figure: normal-request latency with 1,000 slowloris
/// connections open, and how many of them the header timeout closed. Run with
/// `cargo test -p llamagate --test it -- --ignored --nocapture slowloris_figure`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn slowloris_figure() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = proxy_with("header_timeout = \"5s\"\n", &sim);
    let to = addr(&proxy);
    let started = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..1000 {
        let stream = connect(to, None).await.unwrap();
        loris.push(slowloris(stream, Duration::from_secs(1), started));
    }
    let opened = started.elapsed();
    let mut latencies = Vec::new();
    while started.elapsed() < Duration::from_millis(4500) {
        let t = Instant::now();
        let reply = post(&format!("{}/api/chat", proxy.url), &chat()).await;
        assert_eq!(reply.status, 200);
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let mut closed = Vec::new();
    for task in loris {
        closed.extend(task.await.unwrap());
    }
    closed.sort();
    let pct = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    eprintln!(
        "1000 slowloris connections opened in {opened:?}; {} normal requests while they were open: \
         p50 {:?}, p99 {:?}, max {:?}; header_timeout = 5s closed {} of 1000 (first at {:?}, last at {:?})",
        latencies.len(),
        pct(&latencies, 50),
        pct(&latencies, 99),
        latencies.last().unwrap(),
        closed.len(),
        closed.first(),
        closed.last(),
    );
}
