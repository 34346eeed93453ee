#!/usr/bin/env python3
"""What llamagate costs in memory and threads while it holds many open streams.

Starts, on 127.0.0.1, BACKENDS slow streaming Ollama backends (this script in
its `--serve-backend` mode, one process each, all serving `llama3.2`) and
llamagate (release build, default policy, the model on every backend as
replicas). It reads llamagate's VmRSS, Threads and open descriptors from /proc
once start-up has settled (idle), then opens STREAMS streaming `/api/chat`
requests through it, in batches, each on its own connection. A backend sends
the first NDJSON frame at once, then one every `--interval` seconds, and the
`done` frame after `--hold` seconds. With every stream open it samples again
(held; peak is VmHWM), lets them finish, samples a last time (after close) and
prints a table: RSS, per-stream KiB ((held - idle) / STREAMS), threads, and how
many streams ended with their `done` frame. Any failure (refused, 503, reset,
no first frame, a stream cut before `done`) is counted and makes it exit 1.

Each of the three roles (client, backends, llamagate) is its own process, with
its soft RLIMIT_NOFILE raised to the hard one: llamagate needs two descriptors
per stream (client and backend side). STREAMS defaults to the most of 10,000
that fits under that limit, (hard - 200) // 2; the limit is printed. The
client sends `Connection: close`, so a finished stream closes its client
connection; llamagate keeps the backend connections in its pool (as Ollama,
the backends never close an idle one), which shows in the descriptors after
close (`--after 100` shows whether they outlive the pool's 90 s idle timeout).

    cargo build --release -p llamagate && python3 host/benches/streams_memory.py
    python3 host/benches/streams_memory.py --streams 200 --hold 5
    python3 host/benches/streams_memory.py --binary /path/to/llamagate --backends 4
"""

import argparse
import asyncio
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BIN, free_port, wait_listening  # noqa: E402

MODEL = "llama3.2"
# Descriptors kept aside, per process, when sizing STREAMS from RLIMIT_NOFILE.
RESERVED_FDS = 200
# llamagate's own derivation of `max_connections` (README, `max_connections`).
LLAMAGATE_RESERVED_FDS, LLAMAGATE_DERIVED_CAP = 64, 10_000


def raise_nofile():
    """Raises this process's soft descriptor limit to the hard one; returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def die_with_parent():
    """In a child, before exec: be killed when the script dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def now_utc():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


# --- The backend: a slow Ollama, HTTP/1.1 with keep-alive, NDJSON streams ---

DETAILS = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
           "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
ENTRY = {"name": f"{MODEL}:latest", "model": f"{MODEL}:latest", "size": 1372744521,
         "digest": "3a754f40342a3a801958fd87edcddc6e764e8f1c2a67247bb9c95137e7de60a0",
         "details": DETAILS}


def listing(path):
    """The body of a GET the backend answers without a model, or None."""
    if path == "/api/version":
        return {"version": "0.12.3"}
    if path == "/api/tags":
        return {"models": [{**ENTRY, "modified_at": "2025-05-04T17:37:44.706015396-07:00"}]}
    if path == "/api/ps":
        # Loaded everywhere, so the policy spreads streams by fewest in flight.
        return {"models": [{**ENTRY, "expires_at": "2099-01-01T00:00:00Z", "size_vram": ENTRY["size"]}]}
    return None


def frame_obj(content, done=False, tokens=0):
    """One of Ollama's chat stream frames; the `done` one carries the counts."""
    out = {"model": MODEL, "created_at": now_utc(), "message": {"role": "assistant", "content": content},
           "done": done}
    if done:
        out.update(done_reason="stop", total_duration=tokens * 20_000_000 + 13_345_678, load_duration=12_345_678,
                   prompt_eval_count=1, prompt_eval_duration=1_000_000, eval_count=tokens,
                   eval_duration=tokens * 20_000_000)
    return out


def frame(content, done=False, tokens=0):
    """A frame as one HTTP chunk holding one NDJSON line."""
    line = json.dumps(frame_obj(content, done, tokens), separators=(",", ":")).encode() + b"\n"
    return b"%x\r\n%s\r\n" % (len(line), line)


class Backend(asyncio.Protocol):
    """One backend connection: reads requests one after another (llamagate does
    not pipeline) and answers each, streaming `/api/chat`."""

    def __init__(self, hold, interval):
        self.hold, self.interval = hold, interval
        self.buf = b""
        self.timer = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if self.timer:
            self.timer.cancel()

    def data_received(self, data):
        self.buf += data
        while self.timer is None:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            method, path = head[0].split(" ")[:2]
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            self.answer(method, path, body)

    def reply(self, status, obj, head_only=False):
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.transport.write(b"HTTP/1.1 %s\r\ncontent-type: application/json; charset=utf-8\r\n"
                             b"content-length: %d\r\n\r\n" % (status.encode(), len(body))
                             + (b"" if head_only else body))

    def answer(self, method, path, body):
        if method in ("GET", "HEAD") and path == "/":
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: 17\r\n\r\n" + (b"" if method == "HEAD" else b"Ollama is running"))
        elif method in ("GET", "HEAD") and listing(path) is not None:
            self.reply("200 OK", listing(path), method == "HEAD")
        elif method == "POST" and path == "/api/chat":
            try:
                request = json.loads(body)
            except ValueError:
                return self.reply("400 Bad Request", {"error": "invalid JSON"})
            if request.get("stream") is False:
                return self.reply("200 OK", frame_obj("", True, 0))
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n" + frame("Hello"))
            self.tokens, self.ends = 1, time.monotonic() + self.hold
            self.timer = asyncio.get_running_loop().call_later(self.interval, self.tick)
        else:
            self.reply("404 Not Found", {"error": f"404 page not found: {method} {path}"})

    def tick(self):
        if self.transport.is_closing():
            self.timer = None
            return
        if time.monotonic() + 0.01 < self.ends:
            self.tokens += 1
            self.transport.write(frame(" tok"))
            self.timer = asyncio.get_running_loop().call_later(self.interval, self.tick)
        else:
            self.transport.write(frame("", True, self.tokens) + b"0\r\n\r\n")
            self.timer = None
            if self.buf:
                self.data_received(b"")


def serve_backend(port, hold, interval):
    raise_nofile()

    async def run():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Backend(hold, interval), "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    asyncio.run(run())


# --- The client: S streams through llamagate, counted ---

class Stream(asyncio.Protocol):
    """One streaming chat request on its own connection. Reports through futures
    when its first frame arrives and when it ends (`ok` or a failure's name)."""

    def __init__(self, request, first, ended):
        self.request, self.first, self.ended = request, first, ended
        self.buf = b""
        self.head_done = False
        self.lines = 0
        self.done_frame = False
        self.finished = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def end(self, outcome):
        self.finished = True
        if not self.ended.done():
            self.ended.set_result(outcome)
        if not self.first.done():
            self.first.set_result(False)
        self.transport.close()

    def data_received(self, data):
        self.buf += data
        if not self.head_done:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            status = head.split(b" ", 2)[1].decode()
            if status != "200":
                return self.end(f"status {status}")
            if b"transfer-encoding: chunked" not in head:
                return self.end("not chunked")
            self.head_done = True
            self.buf = self.buf[head_end + 4:]
        # Chunks, each one or more NDJSON lines; the last chunk is empty.
        while not self.finished:
            size_end = self.buf.find(b"\r\n")
            if size_end < 0:
                return
            size = int(self.buf[:size_end].split(b";")[0], 16)
            if len(self.buf) < size_end + 2 + size + 2:
                return
            chunk = self.buf[size_end + 2:size_end + 2 + size]
            self.buf = self.buf[size_end + 4 + size:]
            if size == 0:
                self.finished = True
                return self.end("ok" if self.done_frame else "ended without done frame")
            for line in chunk.splitlines():
                self.on_line(line)

    def on_line(self, line):
        try:
            obj = json.loads(line)
        except ValueError:
            return self.end("bad NDJSON line")
        if "error" in obj:
            return self.end("error line: " + str(obj["error"])[:60])
        if self.done_frame or obj.get("message", {}).get("role") != "assistant":
            return self.end("bad frame")
        self.lines += 1
        if obj.get("done"):
            self.done_frame = obj.get("done_reason") == "stop" and obj.get("eval_count") == self.lines - 1
            if not self.done_frame:
                return self.end("bad done frame")
        elif not self.first.done():
            self.first.set_result(True)

    def connection_lost(self, exc):
        if not self.ended.done():
            self.end("cut before the end" if self.head_done else "closed before an answer")


async def open_stream(loop, port, request, first, ended):
    try:
        await loop.create_connection(lambda: Stream(request, first, ended), "127.0.0.1", port)
    except ConnectionRefusedError:
        outcome = "connection refused"
    except OSError as e:
        outcome = f"connect failed: {e.strerror or e}"
    else:
        return
    ended.set_result(outcome)
    if not first.done():
        first.set_result(False)


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def proc_status(pid):
    """VmRSS, VmHWM and RssAnon in MiB, Threads, the threads' names, and the
    count of open descriptors."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                out[key] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    names = Counter()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:
            pass  # the thread ended meanwhile
    out["names"] = names
    return out


async def drive(args, port, pid, backend_ports):
    """Opens the streams, samples llamagate, waits for the end; returns the figures."""
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    request = (b"POST /api/chat HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
               b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (port, len(body), body))
    figures = {"idle": proc_status(pid)}
    peak_threads = figures["idle"]["Threads"]

    async def sampler():
        nonlocal peak_threads
        while True:
            peak_threads = max(peak_threads, threads(pid))
            await asyncio.sleep(0.5)

    sampling = asyncio.create_task(sampler())
    firsts, ends = [], []
    started = time.monotonic()
    for at in range(0, args.streams, args.batch):
        batch = [(loop.create_future(), loop.create_future()) for _ in range(min(args.batch, args.streams - at))]
        for first, ended in batch:
            loop.create_task(open_stream(loop, port, request, first, ended))
        # The next batch waits for this one's first frames (or failures).
        await asyncio.wait([f for f, _ in batch], timeout=args.first_timeout)
        firsts += [f for f, _ in batch]
        ends += [e for _, e in batch]
    figures["ramp"] = time.monotonic() - started
    for f in firsts:
        if not f.done():
            f.set_result(False)
    figures["opened"] = sum(f.result() for f in firsts)
    await asyncio.sleep(args.settle)
    figures["ended_before_held"] = sum(e.done() and e.result() == "ok" for e in ends)
    figures["held"] = proc_status(pid)
    figures["per_backend"] = [connections_into(p) for p in backend_ports]
    await asyncio.wait(ends, timeout=args.hold + args.first_timeout)
    outcomes = Counter(e.result() if e.done() else "still open at the end" for e in ends)
    figures["closed_at"] = time.monotonic() - started
    await asyncio.sleep(args.after)
    figures["after"] = proc_status(pid)
    sampling.cancel()
    figures["peak_threads"] = peak_threads
    figures["outcomes"] = outcomes
    return figures


def connections_into(port):
    """Established TCP connections to 127.0.0.1:port (its accepted side)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "01":
                n += 1
    return n


def wait_for_model(port, deadline=30):
    """Until llamagate lists the model (its first probe of the backends has answered)."""
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tags", timeout=2) as r:
                if MODEL in r.read().decode():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"llamagate did not list {MODEL} within {deadline} s")


def report(args, figures, hard, bound, max_conn_note, log_lines):
    idle, held, after = figures["idle"], figures["held"], figures["after"]
    s = args.streams
    per_stream = (held["VmRSS"] - idle["VmRSS"]) * 1024 / s
    outcomes = figures["outcomes"]
    failed = s - outcomes.get("ok", 0)
    print(f"\nllamagate {args.binary}: default policy, {args.backends} backend(s), {max_conn_note}")
    print(f"streams: {s} ({bound}; RLIMIT_NOFILE hard limit {hard}), hold {args.hold:g} s, "
          f"a frame every {args.interval:g} s")
    print(f"opened in {figures['ramp']:.1f} s, batches of {args.batch}; {figures['opened']} had their first "
          f"frame; all ended {figures['closed_at']:.1f} s after the first was opened\n")
    print(f"{'':26} {'RSS MiB':>8} {'anon MiB':>9} {'threads':>8} {'fds':>7}")
    for label, row in (("idle", idle), (f"holding {s} streams", held)):
        print(f"{label:26} {row['VmRSS']:8.1f} {row['RssAnon']:9.1f} {row['Threads']:8} {row['fds']:7}")
    print(f"{'peak (VmHWM; max sampled)':26} {after['VmHWM']:8.1f} {'':9} {figures['peak_threads']:8}")
    print(f"{f'{args.after:g} s after close':26} {after['VmRSS']:8.1f} {after['RssAnon']:9.1f} "
          f"{after['Threads']:8} {after['fds']:7}")
    print("backend connections holding: " + ", ".join(f"b{i} {n}" for i, n in enumerate(figures["per_backend"])))
    print("threads holding: " + ", ".join(f"{n} {name}" for name, n in sorted(held["names"].items())))
    print(f"\nper stream: {per_stream:.1f} KiB ((held - idle) / {s}); "
          f"linearly, 10,000 streams would take {idle['VmRSS'] + per_stream * 10_000 / 1024:.0f} MiB")
    print(f"goals: idle <= 30 MiB: {'yes' if idle['VmRSS'] <= 30 else 'NO'}; "
          f"held <= 150 MiB: {'yes' if held['VmRSS'] <= 150 else 'NO'} (at {s} streams)")
    if figures["ended_before_held"]:
        print(f"note: {figures['ended_before_held']} streams had already ended when 'holding' was sampled: "
              f"raise --hold above the ramp time")
    print(f"streams completed with their done frame: {outcomes.get('ok', 0)} of {s}; failed: {failed}")
    for outcome, n in outcomes.most_common():
        if outcome != "ok":
            print(f"  {n:6}  {outcome}")
    print(f"llamagate wrote {len(log_lines)} log lines at warn and above")
    # The distinct ones, timestamps aside, with their counts.
    distinct = Counter(line.split(" ", 1)[-1].strip() for line in log_lines)
    for line, n in distinct.most_common(5):
        print(f"  {n:6}  {line[:200]}")
    return failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    hard = raise_nofile()
    fit = (hard - RESERVED_FDS) // 2
    parser.add_argument("--binary", default=BIN, help="the llamagate binary (default: %(default)s)")
    parser.add_argument("--streams", type=int, default=min(10_000, fit),
                        help="streams held at once (default: min(10000, (hard nofile - 200) // 2) = %(default)s)")
    parser.add_argument("--backends", type=int, default=2, help="backend processes (default: 2)")
    parser.add_argument("--hold", type=float, default=20,
                        help="seconds each stream lasts, from its own start; longer than opening them all "
                             "takes (about 8 s for 9,900 here) plus --settle (default: 20)")
    parser.add_argument("--interval", type=float, default=1, help="seconds between frames (default: 1)")
    parser.add_argument("--batch", type=int, default=500, help="connections opened at once (default: 500)")
    parser.add_argument("--settle", type=float, default=2, help="seconds before each sample (default: 2)")
    parser.add_argument("--after", type=float, default=2,
                        help="seconds from the last stream's end to the last sample (default: 2)")
    parser.add_argument("--first-timeout", type=float, default=30,
                        help="seconds a batch may wait for its first frames (default: 30)")
    parser.add_argument("--timeout", type=float, default=300, help="the whole run's limit (default: 300)")
    parser.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        return serve_backend(args.serve_backend, args.hold, args.interval)
    if not os.path.exists(args.binary):
        raise SystemExit(f"{args.binary} is missing: cargo build --release -p llamagate (or --binary PATH)")
    bound = "as asked" if args.streams != min(10_000, fit) else (
        "the asked 10,000" if fit >= 10_000 else f"bounded by the descriptor limit: ({hard} - {RESERVED_FDS}) // 2")
    if args.streams > fit:
        print(f"warning: {args.streams} streams need about {2 * args.streams} descriptors in llamagate; "
              f"the hard limit is {hard}")

    procs = []

    def stop_children():
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    def on_alarm(_signum, _frame):
        # The backstop of --timeout, should the event loop itself be stuck.
        stop_children()
        os._exit(3)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout) + 30)

    work = tempfile.mkdtemp(prefix="llamagate-streams-")
    log_path = os.path.join(work, "llamagate.log")
    try:
        ports = [free_port() for _ in range(args.backends)]
        for p in ports:
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve-backend", str(p), "--hold", str(args.hold),
                 "--interval", str(args.interval)], preexec_fn=die_with_parent))
        # llamagate inherits the raised soft limit and derives max_connections from it.
        derived = min(LLAMAGATE_DERIVED_CAP, max(1, (hard - LLAMAGATE_RESERVED_FDS) // 2))
        config = os.path.join(work, "llamagate.toml")
        replicas = ", ".join(f'"b{i}"' for i in range(len(ports)))
        with open(config, "w") as f:
            if args.streams > derived:
                f.write(f"max_connections = {args.streams}\n")
            # Every stream runs at once: slots must not bind.
            f.write(f"parallel = {args.streams}\n")
            f.write("[connections]\n" + "".join(f'b{i} = "http://127.0.0.1:{p}"\n' for i, p in enumerate(ports)))
            f.write(f'[policy.models]\n"{MODEL}" = [{replicas}]\n')
        # No idle_timeout change: it spares requests in flight, silent streams included (README).
        max_conn_note = (f"max_connections set to {args.streams} (the derived cap is {derived})"
                         if args.streams > derived else f"max_connections default ({derived}, from RLIMIT_NOFILE)")
        port = free_port()
        with open(log_path, "w") as log:
            lg = subprocess.Popen([args.binary, "--config", config, "--listen", f"127.0.0.1:{port}", "--level",
                                   "warn"], stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent)
        procs.append(lg)
        for p in ports + [port]:
            wait_listening(p)
        wait_for_model(port)
        time.sleep(args.settle)
        if lg.poll() is not None:
            raise SystemExit(f"llamagate exited with {lg.returncode}: {open(log_path).read()[-500:]}")
        figures = asyncio.run(asyncio.wait_for(drive(args, port, lg.pid, ports), args.timeout))
        with open(log_path) as f:
            log_lines = [line.rstrip() for line in f if line.strip()]
        failed = report(args, figures, hard, bound, max_conn_note, log_lines)
        return 1 if failed else 0
    except asyncio.TimeoutError:
        raise SystemExit(f"the run took longer than --timeout {args.timeout:g} s")
    finally:
        signal.alarm(0)
        stop_children()
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)


if __name__ == "__main__":
    sys.exit(main())
