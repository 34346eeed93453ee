#!/usr/bin/env python3
"""A flood of requests that make a plugin spin, beside well-behaved ones.

Starts, on 127.0.0.1, a simulated Ollama (`llamagate sim`) and llamagate
(release build) with the default policy plus the hostile test plugin (which
spins until its time limit on `x-hostile: loop`). Then sends FLOOD spinning
requests from 127.0.0.2 and, 0.3 s later, NORMAL ordinary requests from
NORMAL_KEYS addresses of 127.0.1.0/24, all at once, each on its own
connection, and reports how many ordinary requests failed (goal: 0), their
latency, what the flood got, and llamagate's memory before and after.

    cargo build --release -p llamagate
    cargo build --release --target wasm32-wasip2 -p hostile-fixture --target-dir target/plugins
    python3 host/benches/plugin_flood.py [FLOOD=1500] [NORMAL=300] [NORMAL_KEYS=1]
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BIN, ROOT, free_port, wait_listening  # noqa: E402

HOSTILE = os.path.join(ROOT, "target/plugins/wasm32-wasip2/release/hostile_fixture.wasm")
BODY = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
                   "stream": False}).encode()




def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


async def one(port, src, behaviour):
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    writer.write(b"POST /api/chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"x-hostile: " + behaviour.encode() + b"\r\nconnection: close\r\ncontent-length: "
                 + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, time.monotonic() - started, data.split(b"\r\n\r\n", 1)[-1][:160]


async def run(port, flood, normal, keys):
    t0 = time.monotonic()
    spinning = [asyncio.create_task(one(port, "127.0.0.2", "loop")) for _ in range(flood)]
    await asyncio.sleep(0.3)
    calm = [asyncio.create_task(one(port, f"127.0.1.{1 + i % keys}", "none")) for i in range(normal)]
    done = await asyncio.gather(*calm)
    calm_done = time.monotonic() - t0
    flooded = await asyncio.gather(*spinning)
    latencies = sorted(d[1] for d in done)
    failed = [d for d in done if d[0] != 200]
    print(f"normal: {len(done)} from {keys} address(es): failed {len(failed)}, "
          f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p90 {latencies[int(len(latencies) * 0.9)] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms; all done at {calm_done:.1f} s")
    if failed:
        print("  e.g.", failed[0])
    print(f"flood: {flood} from 127.0.0.2: {dict(Counter(d[0] for d in flooded))}, "
          f"done at {time.monotonic() - t0:.1f} s")


def main():
    flood, normal, keys = (int(a) for a in (sys.argv[1:] + ["1500", "300", "1"][len(sys.argv) - 1:])[:3])
    for path in (BIN, HOSTILE):
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing; see this script's docstring")
    backend_port, port = free_port(), free_port()
    backend = subprocess.Popen([BIN, "sim", "--listen", f"127.0.0.1:{backend_port}", "--level", "warn"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f'parallel = 4096\n[connections]\na = "http://127.0.0.1:{backend_port}"\n[policy.models]\n"llama3.2" = "a"\n'
                 f'[[plugins]]\nname = "hostile"\npath = "{HOSTILE}"\n')
    config.close()
    proxy = subprocess.Popen([BIN, "--config", config.name, "--listen", f"127.0.0.1:{port}",
                              "--level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(backend_port)
        wait_listening(port)
        time.sleep(1)
        before = rss(proxy.pid)
        asyncio.run(run(port, flood, normal, keys))
        time.sleep(3)
        print(f"llamagate RSS: {before:.0f} MB before, {rss(proxy.pid):.0f} MB 3 s after")
    finally:
        proxy.kill()
        _, err = proxy.communicate()
        backend.kill()
        backend.wait()
        os.unlink(config.name)
        lines = err.decode(errors="replace").splitlines()
        print(f"llamagate wrote {len(lines)} log lines at warn and above")


if __name__ == "__main__":
    sys.exit(main())
