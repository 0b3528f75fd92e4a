"""``python -m bench.celery_client``: the Celery side of the peer case's closed loop,
in a process of its own so its CPU time is its own.

Protocol with the bench, one JSON object a line on stdout: after ``--warmup`` jobs
(which also wait for the worker to be ready) it writes ``{"warm": ...}`` and waits for
a line on stdin; then it runs ``--jobs`` jobs with exactly ``--concurrency`` in flight
(one thread each: Celery's client blocks in ``AsyncResult.get``, and each thread has
its own result backend connection) and writes the result: latencies, wall time, and
the CPU this process used during the measured jobs only (imports and warm-up left out).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from typing import Any


def cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def closed_loop(n: int, concurrency: int, limit_s: float, argv: list[str]) -> dict[str, Any]:
    from bench.celery_app import run

    deadline = time.monotonic() + limit_s
    counter = iter(range(n))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None or len(errors) >= 20:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            t0 = time.perf_counter()
            try:
                code = run.delay(argv).get(timeout=remaining)
            except Exception as exc:  # a timeout or a broker error: counted, not raised
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            took = time.perf_counter() - t0
            with lock:
                if code == 0:
                    latencies.append(took)
                else:
                    errors.append(f"exit code {code}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0, cpu0 = time.perf_counter(), cpu_s()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "done": len(latencies),
        "wall_s": time.perf_counter() - t0,
        "cpu_s": cpu_s() - cpu0,
        "latencies_s": [round(x, 6) for x in latencies],
        "errors": errors[:5],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.celery_client")
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=24)
    p.add_argument("--warmup-limit", type=float, required=True, help="seconds")
    p.add_argument("--limit", type=float, required=True, help="seconds for the measured jobs")
    args = p.parse_args(argv)
    command = ["true"]
    warm = closed_loop(args.warmup, args.concurrency, args.warmup_limit, command)
    warm.pop("latencies_s")
    print(json.dumps({"warm": warm}), flush=True)
    if warm["done"] < args.warmup or not sys.stdin.readline():
        return 1
    print(json.dumps(closed_loop(args.jobs, args.concurrency, args.limit, command)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
