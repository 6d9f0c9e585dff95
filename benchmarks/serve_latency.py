"""Time of one planner-page request (`ftopt serve`, GET /api/plan) for the 70B presets: the server's own time per
request (`server_ms`, measured in the handler) and the wall time a client sees, over N requests each.

    python benchmarks/serve_latency.py [N]

Starts the server in this process on a free loopback port; prints median and worst per query."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import urllib.request

from ftopt.serve.server import make_server

QUERIES = [
    "model=llama-2-70b&gpu=a100-80g&gpus=8&seq_len=4096&dataset_tokens=100000000&cost_per_gpu_hour=2",
    "model=llama-3.1-70b&gpu=h100-80g&gpus=8&seq_len=8192",
    "model=qwen2.5-72b&gpu=a100-80g&gpus=1",  # nothing fits on one GPU: the fewest-GPUs search runs longest
]


def main(n: int) -> None:
    srv = make_server("127.0.0.1", 0, None)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = "http://%s:%d/api/plan?" % srv.server_address[:2]
    urllib.request.urlopen(base + QUERIES[0]).read()  # first request imports the planner: not counted
    for q in QUERIES:
        server_ms, wall_ms = [], []
        for _ in range(n):
            t = time.perf_counter()
            body = json.loads(urllib.request.urlopen(base + q).read())
            wall_ms.append((time.perf_counter() - t) * 1000)
            server_ms.append(body["server_ms"])
        print(
            f"{q}\n  server ms: median {statistics.median(server_ms):.0f}, max {max(server_ms):.0f}; "
            f"wall ms: median {statistics.median(wall_ms):.0f}, max {max(wall_ms):.0f} (n={n})"
        )
    srv.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
