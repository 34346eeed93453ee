#!/usr/bin/env python3
"""What one large request costs llamagate in memory before any plugin runs.

For each body — 1, 10 and 60 MB made of `options` keys, and 60 MB of prompt
text — this starts a fresh llamagate (release build) in front of a simulated
Ollama on 127.0.0.1, sends the one request, and reads the process's resident
memory from /proc: before (idle), the peak (VmHWM), and a few seconds after.
Growth is reported as a ratio to the body's size (the goal: within 3x, and
back near idle afterwards).

    cargo build --release -p llamagate && python3 host/benches/intake_memory.py
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BIN, ROOT, free_port, wait_listening  # noqa: E402





def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def body_of_options(size):
    keys, parts, total = 0, [], 0
    while total < size:
        part = f'"option_{keys}":{keys},'
        parts.append(part)
        total += len(part)
        keys += 1
    return ('{"model":"llama3.2","stream":false,"options":{' + "".join(parts)[:-1] + "}}").encode(), keys


def body_of_prompt(size):
    return json.dumps({"model": "llama3.2", "stream": False, "prompt": "x" * size}).encode(), 0


def measure(label, body, keys, backend_port):
    port = free_port()
    proxy = subprocess.Popen(
        [BIN, "--listen", f"127.0.0.1:{port}", "--proxy", f"llama3.2=http://127.0.0.1:{backend_port}",
         "--level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        time.sleep(1.0)
        idle = status(proxy.pid)["VmRSS"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", data=body, method="POST")
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                code, text = r.status, r.read()[:120]
        except urllib.error.HTTPError as e:
            code, text = e.code, e.read()[:120]
        took = time.time() - started
        peak = status(proxy.pid)["VmHWM"]
        time.sleep(3.0)
        after = status(proxy.pid)["VmRSS"]
        mb = len(body) / 1e6
        print(f"{label:28} {mb:6.1f} MB {keys:>9} keys -> {code} in {took:5.2f}s | idle {idle/1e6:6.1f} MB, "
              f"peak {peak/1e6:6.1f} MB (growth {(peak-idle)/len(body):4.2f}x body), "
              f"after {after/1e6:6.1f} MB | {text.decode(errors='replace')[:70]}")
    finally:
        proxy.kill()
        proxy.wait()


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: cargo build --release -p llamagate")
    backend_port = free_port()
    backend = subprocess.Popen([BIN, "sim", "--listen", f"127.0.0.1:{backend_port}", "--level", "warn"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(backend_port)
        for mb in (1, 10, 60):
            body, keys = body_of_options(mb * 1_000_000)
            measure(f"options keys, {mb} MB", body, keys, backend_port)
        body, keys = body_of_prompt(60_000_000)
        measure("prompt text, 60 MB", body, keys, backend_port)
    finally:
        backend.kill()
        backend.wait()


if __name__ == "__main__":
    sys.exit(main())
