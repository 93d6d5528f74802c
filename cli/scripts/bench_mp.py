#!/usr/bin/env python3
"""corepool's benchmark workloads on Python's multiprocessing.Pool.

`corepool bench --vs-python` runs this script with `python3` and prints its rows
beside corepool's; it can also be run on its own:

    python3 scripts/bench_mp.py --workers 2 --repeat 5

Each workload runs once as a warm-up (not reported), then `--repeat` times.
Every row is one JSON object on its own line, with the keys of corepool's rows:
workload, system ("python-mp"), workers, items, seconds, rate, unit, plus
repeats, rate_min, rate_max, seconds_min, seconds_max and, where it matters, a
note. `seconds` and `rate` are medians over the repeats; for `latency` and
`pipe_rtt` the rate is the median round trip in ns of each repeat, and its
median over the repeats. The first line (key "kind": "info") describes the interpreter.

Workloads (the same as corepool's, sizes scaled to Python's speed; rates are
per item, so ratios compare like with like):

  apply_async  n no-op tasks submitted with apply_async, then every result collected
  map          Pool.map of a no-op over n ints, Python's default chunksize
  latency      n blocking Pool.apply round trips of a no-op; median in ns
  cpu_loop     the seed's loop `x = x + 1`, n iterations in total, split into
               --cpu-loop-tasks tasks (default 2, as in the seed); rate in
               iterations/s
  shared_sum   the sum of n doubles in a multiprocessing.Array (lock=False)
               that every worker inherits, split into 4 parts per worker;
               numpy sums each part if it is installed, else pure Python
               (the row's note says which)
  queue        n 64-byte bytes objects from one producer Process to this
               process through a multiprocessing.Queue; rate in messages/s
               (the producer puts a marker first: its start-up is not timed)
  pipe_rtt     n round trips of an int through multiprocessing.Pipe() with
               one child Process that answers v + 1 (None ends it);
               median in ns
  start        n Pools of --workers started one after another, each timed
               from the Pool() call until every worker has run its
               initializer (a Barrier of workers + 1); median in ms. Two
               rows: "python-mp" with the fork start method and
               "python-mp-spawn" with spawn (row key "start_method"). Timed
               before anything else, while this interpreter is small.
  bulk         n tasks each taking an 8 MiB bytes object (pickled through
               the Pool's pipes) and returning its length; rate in bytes/s

queue and pipe_rtt do not use the Pool: their rows say 1 worker. corepool's
respawn and bulk_shared have no Python rows (the names are accepted and
skipped).

Standard library only; numpy is optional.
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import struct
import sys
import time

try:  # optional: only shared_sum uses it
    import numpy as np
except ImportError:  # pragma: no cover - depends on the machine
    np = None

WORKLOADS = ["apply_async", "map", "latency", "cpu_loop", "shared_sum", "queue", "pipe_rtt",
             "start", "respawn", "bulk", "bulk_shared"]

# Not on the Pool: one child Process each.
PAIR_WORKLOADS = ("queue", "pipe_rtt")

# corepool's workloads that have no Python counterpart here.
NOT_IN_PYTHON = ("respawn", "bulk_shared")

# Bytes per bulk task.
BULK_BYTES = 8 << 20

# Full sizes. Python runs 10 to 1000 times slower than corepool per item, so
# these are smaller than corepool's; every rate is per item, so the ratio is
# fair whatever the count.
FULL = {
    "apply_async": 20_000,
    "map": 4 << 20,
    "latency": 1_000,
    "cpu_loop": 10_000_000,  # in total
    "shared_sum": 8 << 20,  # doubles (64 MiB) in pure Python
    "queue": 50_000,
    "pipe_rtt": 5_000,
    "start": 5,  # pool starts per run, for each start method
    "bulk": 16,  # tasks of 8 MiB
}
QUICK = {
    "apply_async": 2_000,
    "map": 1 << 20,
    "latency": 200,
    "cpu_loop": 2_000_000,
    "shared_sum": 1 << 20,
    "queue": 20_000,
    "pipe_rtt": 1_000,
    "start": 2,
    "bulk": 4,
}

_ARRAY = None  # the shared array, set in each worker by _init


def _init(array):
    global _ARRAY
    _ARRAY = array


def noop(x):
    return x


def count(n):
    """The seed's loop."""
    x = 0
    for _ in range(n):
        x = x + 1
    return x


def partial_sum(bounds):
    start, end = bounds
    if np is not None:
        return float(np.frombuffer(_ARRAY, dtype=np.float64, count=end - start, offset=start * 8).sum())
    view = memoryview(_ARRAY).cast("B").cast("d")
    return float(sum(view[start:end]))


READY = b"\xff" * 64
PING_WARMUP = 100


def message(i):
    """Message i of queue: 64 bytes that start with i."""
    return i.to_bytes(8, "little") * 8


def produce(q, n):
    q.put(READY)
    for i in range(n):
        q.put(message(i))


def ponger(conn):
    """Answers v with v + 1 until None (with fork, the child also holds the
    parent's end, so closing it there would never reach the child as EOF)."""
    while True:
        v = conn.recv()
        if v is None:
            return
        conn.send(v + 1)


def ns():
    return time.perf_counter_ns()


def _start_barrier(barrier):
    """Each worker's initializer: the pool is ready when all have run it."""
    barrier.wait(60)


def bench_start(method, workers, n):
    """n pools started with `method`; the median time until every worker
    has run its initializer, in ms."""
    ctx = mp.get_context(method)
    times = []
    t0 = ns()
    for _ in range(n):
        barrier = ctx.Barrier(workers + 1)
        t = ns()
        pool = ctx.Pool(workers, initializer=_start_barrier, initargs=(barrier,))
        barrier.wait(60)
        times.append((ns() - t) / 1e6)
        pool.terminate()
        pool.join()
    return (ns() - t0) / 1e9, float(statistics.median(times))


def bench_bulk(pool, n, blobs):
    t = ns()
    handles = [pool.apply_async(len, (b,)) for b in blobs[:n]]
    total = sum(h.get() for h in handles)
    seconds = (ns() - t) / 1e9
    assert total == n * BULK_BYTES, total
    return seconds, total / seconds


def bench_apply_async(pool, workers, n):
    t = ns()
    handles = [pool.apply_async(noop, (i,)) for i in range(n)]
    total = sum(h.get() for h in handles)
    seconds = (ns() - t) / 1e9
    assert total == n * (n - 1) // 2
    return seconds, n / seconds


def bench_map(pool, workers, n, data):
    t = ns()
    out = pool.map(noop, data)
    seconds = (ns() - t) / 1e9
    assert len(out) == n and out[-1] == n - 1
    return seconds, n / seconds


def bench_latency(pool, workers, n):
    samples = []
    t0 = ns()
    for i in range(n):
        t = ns()
        r = pool.apply(noop, (i,))
        samples.append(ns() - t)
        assert r == i
    seconds = (ns() - t0) / 1e9
    return seconds, float(statistics.median(samples))


def bench_cpu_loop(pool, tasks, n):
    parts = [n * (i + 1) // tasks - n * i // tasks for i in range(tasks)]
    t = ns()
    handles = [pool.apply_async(count, (p,)) for p in parts]
    total = sum(h.get() for h in handles)
    seconds = (ns() - t) / 1e9
    assert total == n
    return seconds, total / seconds


def bench_shared_sum(pool, workers, n):
    parts = workers * 4
    bounds = [(n * p // parts, n * (p + 1) // parts) for p in range(parts)]
    t = ns()
    total = sum(pool.map(partial_sum, bounds, chunksize=1))
    seconds = (ns() - t) / 1e9
    assert total == float(n), total
    return seconds, n / seconds


def bench_queue(n):
    q = mp.Queue(1024)
    p = mp.Process(target=produce, args=(q, n))
    p.start()
    assert q.get() == READY
    t = ns()
    total = 0
    for _ in range(n):
        m = q.get()
        assert len(m) == 64
        total += int.from_bytes(m[:8], "little")
    seconds = (ns() - t) / 1e9
    p.join()
    assert total == n * (n - 1) // 2
    return seconds, n / seconds


def bench_pipe_rtt(n):
    mine, theirs = mp.Pipe()
    p = mp.Process(target=ponger, args=(theirs,))
    p.start()
    theirs.close()
    for i in range(PING_WARMUP):
        mine.send(i)
        assert mine.recv() == i + 1
    samples = []
    t0 = ns()
    for i in range(n):
        t = ns()
        mine.send(i)
        r = mine.recv()
        samples.append(ns() - t)
        assert r == i + 1
    seconds = (ns() - t0) / 1e9
    mine.send(None)
    p.join()
    mine.close()
    return seconds, float(statistics.median(samples))


UNITS = {
    "apply_async": "tasks/s",
    "map": "items/s",
    "latency": "ns",
    "cpu_loop": "iterations/s",
    "shared_sum": "elements/s",
    "queue": "messages/s",
    "pipe_rtt": "ns",
    "start": "ms",
    "bulk": "B/s",
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--only", default="", help="comma-separated workloads")
    for w in WORKLOADS:
        p.add_argument("--" + w.replace("_", "-"), type=int, dest=w, default=None,
                       help="items per run of %s (cpu_loop: iterations in total)" % w)
    p.add_argument("--cpu-loop-tasks", type=int, default=2,
                   help="tasks that share cpu_loop's iterations (default 2, as in the seed)")
    a = p.parse_args()
    if a.workers < 1 or a.repeat < 1 or a.cpu_loop_tasks < 1:
        p.error("--workers, --repeat and --cpu-loop-tasks must be at least 1")
    only = [w for w in a.only.split(",") if w]
    for w in only:
        if w not in WORKLOADS:
            p.error("unknown workload %r: choose from %s" % (w, ", ".join(WORKLOADS)))
    selected = [w for w in WORKLOADS if not only or w in only]
    sizes = dict(QUICK if a.quick else FULL)
    for w in WORKLOADS:
        if getattr(a, w) is not None:
            if getattr(a, w) < 1:
                p.error("--%s must be at least 1" % w.replace("_", "-"))
            sizes[w] = getattr(a, w)

    print(json.dumps({
        "kind": "info",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "start_method": mp.get_start_method(),
        "numpy": None if np is None else np.__version__,
    }), flush=True)

    def emit(w, system, n, results, **extra):
        seconds = [s for s, _ in results]
        rates = [r for _, r in results]
        row = {
            "workload": w,
            "system": system,
            "workers": 1 if w in PAIR_WORKLOADS else a.workers,
            "items": n,
            "seconds": statistics.median(seconds),
            "rate": statistics.median(rates),
            "unit": UNITS[w],
            "repeats": a.repeat,
            "rate_min": min(rates),
            "rate_max": max(rates),
            "seconds_min": min(seconds),
            "seconds_max": max(seconds),
        }
        row.update(extra)
        print(json.dumps(row), flush=True)

    # Pool starts first, while this interpreter is small (a forked pool
    # copies its parent's page tables); one warm-up start each.
    if "start" in selected:
        n = sizes["start"]
        for method, system in (("fork", "python-mp"), ("spawn", "python-mp-spawn")):
            bench_start(method, a.workers, 1)
            results = [bench_start(method, a.workers, n) for _ in range(a.repeat)]
            emit("start", system, n, results, start_method=method)

    on_pool = [w for w in selected if w != "start" and w not in NOT_IN_PYTHON]
    if not on_pool:
        return
    array = None
    if "shared_sum" in on_pool:
        n = sizes["shared_sum"]
        array = mp.Array("d", n, lock=False)
        memoryview(array).cast("B")[:] = struct.pack("d", 1.0) * n
    data = list(range(sizes["map"])) if "map" in on_pool else None

    with mp.Pool(a.workers, initializer=_init, initargs=(array,)) as pool:
        # Made after the workers started: they need not inherit them.
        blobs = None
        if "bulk" in on_pool:
            blobs = [bytes([i % 251 + 1]) * BULK_BYTES for i in range(sizes["bulk"])]
        for w in on_pool:
            n = sizes[w]
            if w == "apply_async":
                run = lambda n: bench_apply_async(pool, a.workers, n)
            elif w == "map":
                run = lambda n: bench_map(pool, a.workers, n, data[:n])
            elif w == "latency":
                run = lambda n: bench_latency(pool, a.workers, n)
            elif w == "cpu_loop":
                run = lambda n: bench_cpu_loop(pool, a.cpu_loop_tasks, n)
            elif w == "queue":
                run = bench_queue
            elif w == "pipe_rtt":
                run = bench_pipe_rtt
            elif w == "bulk":
                run = lambda n: bench_bulk(pool, n, blobs)
            else:
                run = lambda n: bench_shared_sum(pool, a.workers, n)
            # Warm-up, not reported: a quarter of the size where the full size
            # would take seconds in Python; the whole array for shared_sum so
            # that every worker has mapped every page.
            run(n if w in ("cpu_loop", "shared_sum") else max(n // 4, 1))
            results = [run(n) for _ in range(a.repeat)]
            extra = {}
            if w == "shared_sum":
                extra["note"] = ("numpy %s sums each part" % np.__version__ if np is not None
                                 else "pure-Python sum: numpy is not installed")
            emit(w, "python-mp", n, results, **extra)
        pool.close()
        pool.join()


if __name__ == "__main__":
    sys.exit(main())
