"""The queues a user would pick instead: huey (FileHuey, SqliteHuey), dirq, persist-queue, RQ.

They live in the benchmark's own virtualenv (``bench/setup.sh``), never in
spoolatp's dependencies; each measurement is skipped with a reason when its
peer is not importable. End-to-end figures use each peer's real consumer
(``huey_consumer``, ``rq worker``) over a prefilled queue and read the same
handler-start stamps as spoolatp's daemon figures.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from common import drain_rate, env_with_plugin, parallel_rate, wait_stamps

PAYLOAD = b"x" * 200


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("huey", "dirq", "persist-queue", "rq", "redis"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["redis-server"] = _redis_server_version()
    return out


def _redis_server_version() -> str | None:
    exe = shutil.which("redis-server")
    if not exe:
        return None
    try:
        text = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((w[2:] for w in text.split() if w.startswith("v=")), text.strip() or None)


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot be measured here, or None."""
    needs = {
        "huey": ["huey"],
        "dirq": ["dirq"],
        "persist-queue": ["persistqueue"],
        "rq": ["rq", "redis"],
    }[peer]
    for module in needs:
        try:
            importlib.import_module(module)
        except ImportError:
            hint = "run bench/setup.sh, or python bench/run.py without --quick"
            return f"{module} is not installed in {sys.prefix} ({hint})"
    if peer == "rq" and not shutil.which("redis-server"):
        return "redis-server is not installed (apt-get install redis-server)"
    return None


# --------------------------------------------------------------------------- huey


def _huey(kind: str, path: str, fsync: bool = False) -> Any:
    import peer_apps

    return peer_apps.make_huey(kind, path, fsync)


def _huey_path(base: str, kind: str, tag: str) -> str:
    return os.path.join(base, f"huey-{kind}-{tag}" + (".db" if kind == "sqlite" else ""))


def _huey_produce(i: int, kind: str, path: str, n: int, fsync: bool) -> int:
    import peer_apps

    huey = _huey(kind, path, fsync)
    task = huey.task(name="noop")(peer_apps.noop)
    for _ in range(n):
        task()
    return n


def _huey_consume(i: int, kind: str, path: str, fsync: bool) -> int:
    import peer_apps

    huey = _huey(kind, path, fsync)
    huey.task(name="noop")(peer_apps.noop)
    done = 0
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        done += 1
    return done


def huey_api(base: str, kind: str, n: int, procs: int = 1, fsync: bool = False) -> dict[str, float]:
    """Enqueue and dequeue+execute rates through huey's API in ``procs`` processes."""
    path = _huey_path(base, kind, f"api{procs}")
    _huey(kind, path, fsync)
    out = {
        "enqueue": parallel_rate(procs, _huey_produce, kind, path, max(1, n // procs), fsync),
        "consume": parallel_rate(procs, _huey_consume, kind, path, fsync),
    }
    _rm(path)
    return out


def huey_consumer(base: str, kind: str, workers: int, n: int, worker_type: str, fsync: bool = False) -> dict[str, Any]:
    """huey_consumer with ``workers`` workers draining ``n`` prefilled stamp tasks."""
    path = _huey_path(base, kind, f"e2e{workers}")
    stamps = path + ".stamps"
    env = env_with_plugin({"BENCH_HUEY_KIND": kind, "BENCH_HUEY_PATH": path, "BENCH_HUEY_FSYNC": "1" if fsync else ""})
    produce = f"import peer_apps\nfor _ in range({n}): peer_apps.huey_stamp({stamps!r})"
    subprocess.run([sys.executable, "-c", produce], env=env, check=True)
    cmd = [sys.executable, "-m", "huey.bin.huey_consumer", "peer_apps.huey", "-w", str(workers), "-k", worker_type]
    with open(os.path.join(base, "huey.log"), "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        got = wait_stamps(stamps, n, timeout=max(120.0, n / 20), alive=lambda: proc.poll() is None)
    finally:
        _stop(proc)
    _rm(path)
    _rm(stamps)
    return {"rate": drain_rate(got), "done": len(got), "n": n, "worker_type": worker_type}


def huey_depth(base: str, kind: str, depths: list[int], window: float) -> dict[int, float]:
    """Per-task cost of huey's storage dequeue at each queue depth (microseconds)."""
    path = _huey_path(base, kind, "depth")
    storage = _huey(kind, path).storage
    out: dict[int, float] = {}
    filled = 0
    for depth in depths:
        _huey_fill(storage, kind, path, filled, depth - filled)
        filled = depth
        budget = max(1, depth // 2)
        done, t0 = 0, time.perf_counter()
        taken = []
        while done < budget and time.perf_counter() - t0 < window:
            taken.append(storage.dequeue())
            done += 1
        out[depth] = (time.perf_counter() - t0) / done * 1e6
        for data in taken:  # back to the same depth
            storage.enqueue(data)
    _rm(path)
    return out


def _huey_fill(storage: Any, kind: str, path: str, start: int, count: int) -> None:
    if kind == "file":
        queue = os.path.join(path, "queue")
        os.makedirs(queue, exist_ok=True)
        for j in range(start, start + count):  # FileStorage's own names, one millisecond apart
            with open(os.path.join(queue, f"{0:04x}-{1_600_000_000_000 + j:012x}"), "wb") as f:
                f.write(PAYLOAD)
    else:
        conn = storage.conn
        with conn:
            conn.executemany(
                "insert into task (queue, data, priority) values (?, ?, ?)",
                ((storage.name, PAYLOAD, 0) for _ in range(count)),
            )


# --------------------------------------------------------------------------- dirq


def _dirq_produce(i: int, path: str, n: int) -> int:
    from dirq.QueueSimple import QueueSimple

    q = QueueSimple(path)
    for _ in range(n):
        q.add(PAYLOAD)
    return n


def _dirq_consume(i: int, path: str) -> int:
    from dirq.QueueSimple import QueueSimple

    q = QueueSimple(path)
    done = 0
    for name in q:
        if q.lock(name):
            q.get(name)
            q.remove(name)
            done += 1
    return done


def dirq_api(base: str, n: int, procs: int = 1) -> dict[str, float]:
    path = os.path.join(base, f"dirq-{procs}")
    out = {
        "enqueue": parallel_rate(procs, _dirq_produce, path, max(1, n // procs)),
        "consume": parallel_rate(procs, _dirq_consume, path),
    }
    _rm(path)
    return out


def dirq_depth(base: str, depths: list[int], window: float) -> dict[int, float]:
    from dirq.QueueSimple import QueueSimple

    path = os.path.join(base, "dirq-depth")
    q = QueueSimple(path)
    out: dict[int, float] = {}
    filled = 0
    for depth in depths:
        for _ in range(depth - filled):
            q.add(PAYLOAD)
        filled = depth
        budget = max(1, depth // 2)
        done, t0 = 0, time.perf_counter()
        for name in QueueSimple(path):  # a fresh iterator lists the queue once, like a new consumer
            if q.lock(name):
                q.get(name)
                q.unlock(name)  # keep the depth: this is dequeue cost, not drain
                done += 1
            if done >= budget or time.perf_counter() - t0 >= window:
                break
        out[depth] = (time.perf_counter() - t0) / max(1, done) * 1e6
    _rm(path)
    return out


# --------------------------------------------------------------------------- persist-queue


def persist_api(base: str, n: int) -> dict[str, dict[str, float]]:
    """put and get+ack rates of persist-queue's file Queue and SQLiteQueue, one process."""
    import persistqueue

    out = {}
    for name, make in (
        ("file", lambda p: persistqueue.Queue(p, autosave=True, tempdir=_mkdir(p + "-tmp"))),
        ("sqlite", lambda p: persistqueue.SQLiteQueue(p, auto_commit=True)),
    ):
        path = os.path.join(base, f"persist-{name}")
        q = make(path)
        t0 = time.perf_counter()
        for _ in range(n):
            q.put(PAYLOAD)
        enq = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            q.get(block=False)
            if name == "file":
                q.task_done()
        out[name] = {"enqueue": enq, "consume": n / (time.perf_counter() - t0)}
        del q
        _rm(path)
        _rm(path + "-tmp")
    return out


# --------------------------------------------------------------------------- RQ


class RedisServer:
    """A redis-server on 127.0.0.1 for this run only, stopped by its own process id."""

    def __init__(self, base: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = os.path.join(base, "redis")
        os.makedirs(self.dir, exist_ok=True)
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        cmd += ["--dir", self.dir, "--daemonize", "no", "--protected-mode", "yes"]
        self.log = open(os.path.join(base, "redis.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        conn = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not answer within 20 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


def rq_figures(base: str, n_api: int, n_e2e: int, workers_list: list[int]) -> dict[str, Any]:
    """RQ: enqueue rate through the API, and the drain rate of real ``rq worker`` processes."""
    import peer_apps
    import redis
    from rq import Queue

    server = RedisServer(base)
    out: dict[str, Any] = {}
    try:
        conn = redis.Redis.from_url(server.url)
        q = Queue("bench", connection=conn)
        t0 = time.perf_counter()
        for _ in range(n_api):
            q.enqueue(peer_apps.noop)
        out["enqueue"] = n_api / (time.perf_counter() - t0)
        q.empty()
        env = env_with_plugin()
        for workers in workers_list:
            stamps = os.path.join(base, f"rq-{workers}.stamps")
            for _ in range(n_e2e):
                q.enqueue(peer_apps.stamp, stamps)
            cmd = [sys.executable, "-m", "rq.cli", "worker", "--burst", "-u", server.url, "-q", "bench"]
            with open(os.path.join(base, "rq.log"), "ab") as log:
                procs = [
                    subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                    for _ in range(workers)
                ]
            try:
                got = wait_stamps(stamps, n_e2e, timeout=max(120.0, n_e2e / 10), alive=_any_alive(procs))
            finally:
                for p in procs:
                    _stop(p)
            out[f"e2e_{workers}"] = {"rate": drain_rate(got), "done": len(got), "n": n_e2e}
            _rm(stamps)
            q.empty()
    finally:
        server.stop()
    return out


# --------------------------------------------------------------------------- helpers


def _mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def _any_alive(procs: list[subprocess.Popen[bytes]]) -> Callable[[], bool]:
    return lambda: any(p.poll() is None for p in procs)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rm(path: str) -> None:
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.exists(p):
            os.unlink(p)
