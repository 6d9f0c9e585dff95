"""Time of one planner-page request (`ftopt serve`, GET /api/plan) for the 70B presets: the server's own time per
request (`server_ms`, measured in the handler), the wall time a client sees, and the CPU time of the same request
body run in this process (what an unloaded machine's wall time approaches: the plan is single-threaded), over N
requests each.

    python benchmarks/serve_latency.py [N]

Starts the server in this process on a free loopback port; prints median and worst per query."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import urllib.request

from ftopt.serve.jobs import plan_body
from ftopt.serve.query import parse_query
from ftopt.serve.server import make_server

# method=analytic: the page's live answer while inputs change (a traced plan, `plan`'s default, then runs as a job)
QUERIES = [
    "model=llama-2-70b&gpu=a100-80g&gpus=8&seq_len=4096&dataset_tokens=100000000&cost_per_gpu_hour=2&method=analytic",
    "model=llama-3.1-70b&gpu=h100-80g&gpus=8&seq_len=8192&method=analytic",
    "model=qwen2.5-72b&gpu=a100-80g&gpus=1&method=analytic",  # nothing fits on one GPU: the fewest-GPUs search
]


def main(n: int) -> None:
    srv = make_server("127.0.0.1", 0, None)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    host, port = srv.server_address[:2]
    base = f"http://{host}:{port}/api/plan?"
    urllib.request.urlopen(base + QUERIES[0]).read()  # first request imports the planner: not counted
    for q in QUERIES:
        server_ms, wall_ms, cpu_ms = [], [], []
        params = dict(p.split("=") for p in q.split("&"))
        for _ in range(n):
            t = time.process_time()
            plan_body(parse_query(params).model_dump(), None, True)
            cpu_ms.append((time.process_time() - t) * 1000)
            t = time.perf_counter()
            body = json.loads(urllib.request.urlopen(base + q).read())
            wall_ms.append((time.perf_counter() - t) * 1000)
            server_ms.append(body["server_ms"])
        print(
            f"{q}\n  server ms: median {statistics.median(server_ms):.0f}, max {max(server_ms):.0f}; "
            f"wall ms: median {statistics.median(wall_ms):.0f}, max {max(wall_ms):.0f}; "
            f"CPU ms in-process: median {statistics.median(cpu_ms):.0f}, max {max(cpu_ms):.0f} (n={n})"
        )
    srv.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
