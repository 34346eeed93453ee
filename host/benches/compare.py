#!/usr/bin/env python3
"""llamagate beside nginx, measured in one run on 127.0.0.1.

Starts two simulated Ollama backends (`llamagate sim`, release build), nginx
(Debian's package) as a plain `proxy_pass` peer with keepalive upstreams, and
llamagate with its default policy in front of both backends. Then, in
alternating rounds (direct, nginx, llamagate; ROUNDS times), drives the same
closed-loop load with wrk (CONNECTIONS connections, SECONDS per run) for
non-streaming chat, streaming chat (NDJSON, 5 chunks) and `/api/tags`, and
prints requests/s, p50 and p99 (medians over the rounds) and the ratios.

All processes share the machine's cores: compare the ratios, not the
absolute figures. nginx and wrk are installed with apt-get when missing.

    cargo build --release -p llamagate && python3 host/benches/compare.py
    ROUNDS=5 SECONDS=5 CONNECTIONS=16 python3 host/benches/compare.py

With OBSERVE=1 it measures the cost of observability instead: two llamagates
side by side, one with `metrics = false` and `access_log = false`, one with
both on (the defaults), each at `--level info` with its log written to a file,
and prints on/off.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BIN, ROOT, free_port, wait_listening  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
OBSERVE = os.environ.get("OBSERVE") == "1"
SECONDS = int(os.environ.get("SECONDS", "5"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))

SCENARIOS = {
    "chat, stream:false": ("POST", "/api/chat",
                           '{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'),
    "chat, streamed": ("POST", "/api/chat",
                       '{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'),
    "tags": ("GET", "/api/tags", None),
}


def ensure_tools():
    missing = [p for p, tool in (("nginx-light", "nginx"), ("wrk", "wrk")) if shutil.which(tool) is None
               and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})




def wrk(url, method, body, workdir):
    script = os.path.join(workdir, "req.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "{method}"\n')
        if body:
            f.write("wrk.body = [[" + body + "]]\n")
            f.write('wrk.headers["Content-Type"] = "application/json"\n')
        # The first unexpected answer is printed, to say why a run failed.
        f.write('local shown = false\n'
                'response = function(status, headers, body)\n'
                '  if status ~= 200 and not shown then shown = true; io.write(status .. " " .. body .. "\\n") end\n'
                'end\n')
    out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        print(out)
        raise SystemExit(f"errors against {url}")

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    done = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, pct(50), pct(99), done


def cpu_seconds(pid):
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: cargo build --release -p llamagate")
    ensure_tools()
    work = tempfile.mkdtemp(prefix="llamagate-compare-")
    b1, b2, ng, lg = (free_port() for _ in range(4))
    procs = []

    def start(args, stderr=subprocess.DEVNULL):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        procs.append(p)
        return p

    try:
        start([BIN, "sim", "--listen", f"127.0.0.1:{b1}", "--model", "llama3.2", "--level", "error"])
        start([BIN, "sim", "--listen", f"127.0.0.1:{b2}", "--model", "qwen2.5:14b", "--level", "error"])
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work};
    proxy_temp_path {work};
    upstream backend {{ server 127.0.0.1:{b1}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{ng};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Ollama refuses a Host that is not local (the upstream's name is not).
            proxy_set_header Host 127.0.0.1:{b1};
            proxy_buffering off;
        }}
    }}
}}
""")
        start(["nginx", "-c", conf])
        def llamagate(port, level, extra_toml, log):
            conf = os.path.join(work, f"llamagate-{port}.toml")
            with open(conf, "w") as f:
                f.write(extra_toml)
            with open(os.path.join(work, log), "w") as out:
                return start([BIN, "--config", conf, "--listen", f"127.0.0.1:{port}",
                       "--admin-listen", "127.0.0.1:0",
                       "--proxy", f"llama3.2=http://127.0.0.1:{b1}",
                       "--proxy", f"qwen2.5:14b=http://127.0.0.1:{b2}", "--level", level,
                       # nginx limits nothing: neither may llamagate's slots here.
                       "--parallel", "4096"], stderr=out)

        pids = {}
        if OBSERVE:
            on = free_port()
            pids["llamagate"] = llamagate(lg, "info", "metrics = false\naccess_log = false\n", "off.log").pid
            pids["observed"] = llamagate(on, "info", os.environ.get("OBSERVED_TOML", ""), "on.log").pid
        else:
            pids["llamagate"] = llamagate(lg, "error", "", "llamagate.log").pid
        ports = (b1, b2, ng, lg) + ((on,) if OBSERVE else ())
        for port in ports:
            wait_listening(port)
        time.sleep(1)
        targets = {"direct": b1, "nginx": ng, "llamagate": lg}
        if OBSERVE:
            targets = {"nginx": ng, "llamagate": lg, "observed": on}
        results = {(s, t): [] for s in SCENARIOS for t in targets}
        for scenario, (method, path, body) in SCENARIOS.items():
            for _ in range(ROUNDS):
                for name, port in targets.items():
                    before = cpu_seconds(pids[name]) if name in pids else 0.0
                    rps, p50, p99, done = wrk(f"http://127.0.0.1:{port}{path}", method, body, work)
                    # CPU per request of llamagate itself: steadier than req/s
                    # when other work shares the cores.
                    cpu_us = (cpu_seconds(pids[name]) - before) * 1e6 / done if name in pids else 0.0
                    results[(scenario, name)].append((rps, p50, p99, cpu_us))
        print(f"{CONNECTIONS} connections, {SECONDS} s per run, medians of {ROUNDS} alternating rounds\n")
        print(f"{'scenario':22} {'target':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>8}")
        for scenario in SCENARIOS:
            med = {}
            for name in targets:
                runs = results[(scenario, name)]
                med[name] = tuple(statistics.median(r[i] for r in runs) for i in range(4))
                rps, p50, p99, cpu_us = med[name]
                cpu = f"{cpu_us:8.1f}" if name in pids else ""
                print(f"{scenario:22} {name:10} {rps:9.0f} {p50:8.3f} {p99:8.3f} {cpu}")
            lg_, ng_ = med["llamagate"], med["nginx"]
            if OBSERVE:
                ob = med["observed"]
                print(f"{'':22} observed/off: req/s x{ob[0] / lg_[0]:.3f}, CPU per request x{ob[3] / lg_[3]:.3f}, "
                      f"p50 {ob[1] - lg_[1]:+.3f} ms, "
                      f"p99 {ob[2] - lg_[2]:+.3f} ms; observed/nginx x{ob[0] / ng_[0]:.2f}\n")
                continue
            d_ = med["direct"]
            print(f"{'':22} llamagate/nginx: req/s x{lg_[0] / ng_[0]:.2f}, p99 {lg_[2] - ng_[2]:+.3f} ms; "
                  f"llamagate/direct: req/s x{lg_[0] / d_[0]:.2f}\n")
    finally:
        # SIGTERM first: nginx's master stops its workers then (a SIGKILLed
        # master leaves them running).
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
