"""Shared helpers: parallel timing in forked processes, stamp files, process CPU, percentiles."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIR = os.path.join(BENCH_DIR, "plugin")
STAMP_BYTES = 18  # f"{time.time():.6f}\n" until the year 2286


def _child(fn: Callable[..., int], i: int, args: tuple[Any, ...], go: Any, out: Any) -> None:
    try:
        go.wait()
        t0 = time.perf_counter()
        n = fn(i, *args)
        out.put((i, t0, time.perf_counter(), n, None))
    except BaseException as exc:  # report, never hang the parent
        out.put((i, 0.0, 0.0, 0, f"{type(exc).__name__}: {exc}"))


def parallel_rate(nproc: int, fn: Callable[..., int], *args: Any) -> float:
    """Run ``fn(i, *args)`` in ``nproc`` forked processes released together; return operations per second.

    ``fn`` returns how many operations it did; the rate is their sum over the
    wall time from the first start to the last end.
    """
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(fn, i, args, go, out)) for i in range(nproc)]
    for p in procs:
        p.start()
    time.sleep(0.05)
    go.set()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    errors = [r[4] for r in results if r[4]]
    if errors:
        raise RuntimeError("; ".join(errors))
    start = min(r[1] for r in results)
    end = max(r[2] for r in results)
    return sum(r[3] for r in results) / (end - start)


def append_stamp(path: str, label: str = "") -> None:
    """One O_APPEND write of the current time (and a label) to ``path``."""
    line = f"{label} {time.time():.6f}\n" if label else f"{time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_stamps(path: str) -> list[float]:
    try:
        with open(path) as f:
            return [float(line.split()[-1]) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def wait_stamps(path: str, n: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> list[float]:
    """Wait until ``path`` holds ``n`` fixed-width stamps; return them (fewer on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_size >= n * STAMP_BYTES:
                break
        except FileNotFoundError:
            pass
        if not alive():
            break
        time.sleep(0.02)
    return read_stamps(path)


def drain_rate(stamps: list[float]) -> float | None:
    """Tasks per second between the first and the last handler start (excludes start-up)."""
    if len(stamps) < 2:
        return None
    s = sorted(stamps)
    return (len(s) - 1) / (s[-1] - s[0]) if s[-1] > s[0] else None


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_precise(pid: int) -> float:
    """On-CPU time of all threads of one process, in seconds, from /proc/<pid>/task/*/schedstat (nanoseconds).

    utime+stime are counted in clock ticks (10 ms) charged to whoever runs when
    the tick fires, so a daemon that wakes on a timer (aligned to ticks) is
    over-charged; the scheduler's own runtime is exact.
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def env_with_plugin(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PLUGIN_DIR, BENCH_DIR, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def filesystem_of(path: str) -> str:
    """The type of the file system ``path`` lives on, from /proc/mounts ('' if unknown)."""
    best, kind = "", ""
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                        best, kind = mount, parts[2]
    except OSError:
        pass
    return kind
