"""spoolatp and floor measurements: API rates, queue depth, the daemon, wake-up latency, idle CPU."""

from __future__ import annotations

import ctypes
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from common import (
    BENCH_DIR,
    cpu_seconds,
    cpu_seconds_precise,
    drain_rate,
    env_with_plugin,
    parallel_rate,
    read_stamps,
    summary,
    wait_stamps,
)
from designfloor import DesignFloor, OneFileFloor, design_daemon
from floor import FloorSpool

from spoolatp.errors import QueueEmpty
from spoolatp.format import TASK_MAGIC, encode_name, journal_offset, make_key, seal, unseal
from spoolatp.spool import Spool

NOOP, STAMP = "Noop", "Stamp"
PAYLOAD = b"x" * 200  # about the size of a spoolatp task file holding input None


def new_spool(path: str, durable: bool = False) -> Spool:
    spool = Spool(path)
    spool.register_type(NOOP, "bench.noop")
    spool.register_type(STAMP, "bench.stamp")
    if durable:
        spool.configure(durable=True)
    return spool


# --------------------------------------------------------------------------- API level


def _spool_produce(i: int, path: str, n: int) -> int:
    spool = Spool(path)
    for j in range(n):
        spool.enqueue(NOOP, f"p{i}-{j}", None)
    return n


def _floor_produce(i: int, path: str, n: int, durable: bool) -> int:
    floor = FloorSpool(path, durable)
    for _ in range(n):
        floor.enqueue(PAYLOAD)
    return n


def _design_produce(i: int, path: str, n: int, durable: bool, layout: type[DesignFloor]) -> int:
    floor = layout(path, durable, f"s{i}")
    for _ in range(n):
        floor.enqueue(PAYLOAD)
    return n


def _design_consume(i: int, path: str, durable: bool, layout: type[DesignFloor]) -> int:
    floor = layout(path, durable, f"s{i}")
    done = 0
    while (key := floor.claim()) is not None:
        floor.start(key)
        floor.finish(key)
        done += 1
    return done


def _spool_consume(i: int, path: str) -> int:
    spool = Spool(path)
    done = 0
    while True:
        try:
            claim = spool.claim(f"bench{i}")[0]
        except QueueEmpty:
            return done
        spool.start(claim)  # the no-op handler would run here
        spool.finish(claim)
        done += 1


def _spool_consume_at_once(i: int, path: str) -> int:
    """The daemon's workers' path: claim_and_start() (one rename, one append), then finish()."""
    spool = Spool(path)
    done = 0
    while True:
        try:
            claim, _ = spool.claim_and_start(f"bench{i}")
        except QueueEmpty:
            return done
        spool.finish(claim)
        done += 1


def _floor_consume(i: int, path: str, durable: bool) -> int:
    floor = FloorSpool(path, durable)
    done = 0
    while (name := floor.claim()) is not None:
        floor.read(name)
        floor.complete(name)
        done += 1
    return done


def checks_cost(n: int = 20000) -> dict[str, float]:
    """Seconds per task of the checks alone, without any file operation: what no layout can take away.

    ``consume``: what claim(), start() and finish() must compute on the guide's path (tests demand each):
    validate the server and parse the key, count attempts in the journal, check the record's checksum,
    unpickle it and tie it to its key (at the claim; the start, which must catch a file damaged since the
    claim, compares the bytes it reads with those the claim checked, as spoolatp's does), and format
    three journal lines. ``enqueue``: validate the ids, make the key,
    pickle and seal the record. Each is the fastest of 3 runs of ``n``, with spoolatp's own functions.
    """
    from spoolatp.format import State, parse_key, validate_id
    from spoolatp.spool import _count_state, _json_string

    record = {"type": NOOP, "id": "t123456", "input": None, "enqueued": time.time(), "message": "", "slot": None}
    key = make_key(NOOP, "t123456", time.time_ns(), 5)
    sealed = seal(TASK_MAGIC, pickle.dumps(record, pickle.HIGHEST_PROTOCOL), bind=key)
    reread = bytes(bytearray(sealed))  # equal bytes in another object, as start() reads them

    def consume() -> None:
        validate_id("bench0", "server id")
        parse_key(key)
        _count_state(b"", State.SCHEDULED)
        payload, _ = unseal(TASK_MAGIC, sealed, "task", bind=key)
        got = pickle.loads(payload)
        assert make_key(got["type"], got["id"], int(key[1:17], 16), 5) == key
        assert reread == sealed  # start: the bytes read again are those the claim checked
        for code, message in ((2, "scheduled on bench0"), (3, "started"), (5, "finished")):
            now, srv = time.time(), _json_string("bench0")
            f'{{"t":{now!r},"s":{code},"m":{_json_string(message)},"srv":{srv},"att":1}}\n'.encode()

    def enqueue() -> None:
        validate_id(NOOP, "task type")
        validate_id("t123456", "task id")
        made = make_key(NOOP, "t123456", time.time_ns(), 5)
        seal(TASK_MAGIC, pickle.dumps(dict(record), pickle.HIGHEST_PROTOCOL), bind=made)

    out = {}
    for name, fn in (("consume", consume), ("enqueue", enqueue)):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - start) / n)
        out[name] = best
    return out


def api_rates(
    base: str,
    n: int,
    procs: int,
    durable: bool,
    systems: tuple[str, ...] = ("floor", "design", "onefile", "spoolatp", "atonce"),
) -> dict[str, float]:
    """Enqueue and dequeue+start+finish rates of spoolatp, the floor and both design floors in ``procs`` processes.

    "atonce" is spoolatp consumed with claim_and_start() (the daemon's workers' path); its enqueue rate is
    spoolatp's again, not reported.
    """
    out: dict[str, float] = {}
    per = max(1, n // procs)
    for name, produce, consume, make, extra in (
        ("floor", _floor_produce, _floor_consume, lambda p: FloorSpool(p, durable), (durable,)),
        ("design", _design_produce, _design_consume, lambda p: DesignFloor(p, durable), (durable, DesignFloor)),
        ("onefile", _design_produce, _design_consume, lambda p: OneFileFloor(p, durable), (durable, OneFileFloor)),
        ("spoolatp", _spool_produce, _spool_consume, lambda p: new_spool(p, durable), ()),
        ("atonce", _spool_produce, _spool_consume_at_once, lambda p: new_spool(p, durable), ()),
    ):
        if name not in systems:
            continue
        path = os.path.join(base, f"{name}-{procs}")
        make(path)
        out[f"{name}.enqueue"] = parallel_rate(procs, produce, path, per, *extra)
        out[f"{name}.consume"] = parallel_rate(procs, consume, path, *extra)
        shutil.rmtree(path, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- depth


def _fill_part(i: int, path: str, start: int, count: int, template: dict[str, Any]) -> int:
    """Write tasks exactly as Spool.enqueue lays them out, without its checks (the queue is idle)."""
    ids, enq = os.path.join(path, "ids"), os.path.join(path, "enqueued")
    tname = encode_name(NOOP)
    for j in range(start, start + count):
        tid = f"d{j:08d}"
        key = make_key(NOOP, tid, 0x1800000000000000 + j)
        record = {**template, "id": tid, "enqueued": time.time()}
        os.symlink(key, os.path.join(ids, f"{tname}~{tid}"))
        os.mkdir(os.path.join(enq, key), 0o770)
        fd = os.open(os.path.join(enq, key, "task"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        os.write(fd, seal(TASK_MAGIC, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)))
        os.close(fd)
    return count


def _template(spool: Spool) -> dict[str, Any]:
    """The record a real enqueue of a Noop task writes, read back from its task file."""
    key = spool.enqueue(NOOP, "template", None)
    with open(os.path.join(spool.path, "enqueued", key, "task"), "rb") as f:
        payload, _ = unseal(TASK_MAGIC, f.read(), "template")
    spool.delete(NOOP, "template")
    record = pickle.loads(payload)
    assert isinstance(record, dict) and record.get("type") == NOOP, record
    return record


def fill_spool(path: str, start: int, count: int, procs: int = 2) -> None:
    template = _template(new_spool(path))
    per = count // procs
    parts = [(start + k * per, per if k < procs - 1 else count - per * (procs - 1)) for k in range(procs)]

    def part(i: int, path: str) -> int:
        return _fill_part(i, path, *parts[i], template)

    parallel_rate(procs, part, path)


def _fill_floor(path: str, start: int, count: int) -> None:
    floor = FloorSpool(path)
    new = os.path.join(path, "new")
    for j in range(start, start + count):
        fd = os.open(os.path.join(new, f"{0x1800000000000000 + j:016x}.0.{j}"), os.O_WRONLY | os.O_CREAT, 0o660)
        os.write(fd, PAYLOAD)
        os.close(fd)
    del floor


def depth_costs(
    base: str, depths: list[int], window: float, rounds: int, with_floor: bool = True
) -> dict[int, dict[str, Any]]:
    """Per-task claim() cost at each queue depth.

    One spool per depth, all filled first; then ``rounds`` rounds visit every
    depth in turn for ``window`` seconds each, so a file system that drifts
    (ext4 here) drifts under every depth alike; the best round counts. A spool
    object lives across rounds, so every window includes the once-a-second
    re-listing that a long-running consumer pays.
    """
    out: dict[int, dict[str, Any]] = {}
    spools: dict[int, Spool] = {}
    floors: dict[int, FloorSpool] = {}
    listings: dict[int, Callable[[], int]] = {}
    for depth in depths:
        path = os.path.join(base, f"spool-{depth}")
        fill_spool(path, 0, depth)
        if with_floor:
            _fill_floor(path + "-floor", 0, depth)
            floors[depth] = FloorSpool(path + "-floor")
        spools[depth] = Spool(path)
        listings[depth] = _count_listings(path)
        row: dict[str, Any] = {"claim_us_rounds": [], "floor_claim_us_rounds": [], "claimed": 0}
        t0 = time.perf_counter()
        spools[depth].claim("depth")
        row["first_claim_s"] = time.perf_counter() - t0
        if with_floor:
            t0 = time.perf_counter()
            floors[depth].claim()
            row["floor_first_claim_s"] = time.perf_counter() - t0
        out[depth] = row
    for _ in range(rounds):
        for depth in depths:
            row, spool = out[depth], spools[depth]
            budget = max(1, depth // 2)
            done, t1 = 0, time.perf_counter()
            while done < budget and time.perf_counter() - t1 < window:
                spool.claim("depth")
                done += 1
            row["claim_us_rounds"].append((time.perf_counter() - t1) / done * 1e6)
            row["claimed"] += done
            if with_floor:
                floor = floors[depth]
                fdone, t1 = 0, time.perf_counter()
                while fdone < budget and time.perf_counter() - t1 < window:
                    floor.claim()
                    fdone += 1
                row["floor_claim_us_rounds"].append((time.perf_counter() - t1) / fdone * 1e6)
            _restore(os.path.join(base, f"spool-{depth}"), floors[depth].path if with_floor else None)
    for depth, row in out.items():
        row["claim_us"] = min(row["claim_us_rounds"])
        if with_floor:
            row["floor_claim_us"] = min(row["floor_claim_us_rounds"])
        row["listings"] = listings[depth]()
    return out


def _count_listings(path: str) -> Callable[[], int]:
    """Count listings of ``enqueued/`` by spoolatp from now on (wraps fsio.listdir in this process)."""
    import spoolatp.fsio as mod

    target = os.path.join(path, "enqueued")
    if not hasattr(mod.listdir, "counts"):
        real = mod.listdir
        counts: dict[str, int] = {}

        def counting(p: Any) -> list[str]:
            key = os.fspath(p)
            counts[key] = counts.get(key, 0) + 1
            return real(p)

        counting.counts = counts  # type: ignore[attr-defined]
        mod.listdir = counting
    counts = mod.listdir.counts  # type: ignore[attr-defined]
    counts[target] = 0
    return lambda: counts.get(target, 0)


def _restore(path: str, fpath: str | None) -> None:
    sched = os.path.join(path, "scheduled", "depth")
    for key in os.listdir(sched) if os.path.isdir(sched) else []:
        task = os.path.join(sched, key, "task")
        with open(task, "rb") as f:
            head = f.read(4096)
        os.truncate(task, journal_offset(head))  # as it was: a longer journal would cost more to read
        os.rename(os.path.join(sched, key), os.path.join(path, "enqueued", key))  # idle queue: no race
    if fpath:
        cur = os.path.join(fpath, "cur")
        for name in os.listdir(cur):
            os.rename(os.path.join(cur, name), os.path.join(fpath, "new", name))


def depth_filesystem(n_tasks: int) -> tuple[str | None, str]:
    """A tmpfs with room for ``n_tasks`` spool tasks (3 inodes each): /dev/shm, or a mount of our own."""
    need = 3 * n_tasks + 100_000
    st = os.statvfs("/dev/shm")
    if st.f_favail >= need:
        return None, "/dev/shm"
    mnt = os.path.join("/mnt", f"spoolatp-bench-{os.getpid()}")
    try:
        os.makedirs(mnt, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size=16G,nr_inodes={need + 1_000_000}", "tmpfs", mnt],
            check=True,
            capture_output=True,
        )
        return mnt, mnt
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"no room: /dev/shm has {st.f_favail} free inodes, {need} needed, and mounting failed ({exc})"


def unmount(mnt: str | None) -> None:
    if mnt:
        subprocess.run(["umount", mnt], check=False, capture_output=True)
        os.rmdir(mnt)


# --------------------------------------------------------------------------- the daemon


class DaemonProcess:
    """``python -m spoolatp --spool DIR daemon --workers N``, stopped by its own process id."""

    def __init__(self, spool: str, workers: int, log: str, extra: list[str] | None = None) -> None:
        self.log = open(log, "ab")
        cmd = [sys.executable, "-m", "spoolatp", "--spool", spool, "daemon", "--workers", str(workers), *(extra or [])]
        # not run from the checkout: `python -m` puts the working directory first on sys.path, where its
        # spoolatp/ would shadow the one being measured (a snapshot on PYTHONPATH; docs/bench.md)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env_with_plugin(),
            cwd=os.path.dirname(os.path.abspath(spool)),
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def daemon_throughput(base: str, workers: int, n: int, durable: bool, extra: list[str] | None = None) -> dict[str, Any]:
    """Drain rate of a daemon over ``n`` prefilled stamp tasks: first to last handler start."""
    path = os.path.join(base, f"daemon-{workers}")
    stamps = os.path.join(base, f"daemon-{workers}.stamps")
    log = os.path.join(base, f"daemon-{workers}.log")
    spool = new_spool(path, durable)
    for j in range(n):
        spool.enqueue(STAMP, f"e{j}", stamps)
    daemon = DaemonProcess(path, workers, log, extra)
    t0 = time.perf_counter()
    try:
        got = wait_stamps(stamps, n, timeout=max(120.0, n / 20), alive=daemon.alive)
        wall = time.perf_counter() - t0
    finally:
        daemon.stop()
    if len(got) < n:
        raise RuntimeError(
            f"the daemon ran {len(got)} of {n} tasks (exit code {daemon.proc.returncode}); its log ends: {_tail(log)}"
        )
    shutil.rmtree(path, ignore_errors=True)
    for p in (stamps, log):
        os.unlink(p)
    return {"rate": drain_rate(got), "done": len(got), "n": n, "wall_incl_startup_s": wall}


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def design_daemon_throughput(
    base: str, workers: int, n: int, durable: bool, layout: type[DesignFloor] = DesignFloor
) -> dict[str, Any]:
    """The same drain on the design floor's daemon of self-claiming workers (bench/designfloor.py), on ``layout``."""
    path = os.path.join(base, f"{layout.__name__}-daemon-{workers}")
    stamps = path + ".stamps"
    design_daemon(path, workers, n, stamps, durable, layout)
    got = read_stamps(stamps)
    shutil.rmtree(path, ignore_errors=True)
    os.unlink(stamps)
    return {"rate": drain_rate(got), "done": len(got), "n": n}


def wait_idle_daemon(spool: Spool, stamps: str, daemon: DaemonProcess, warm: int = 5) -> None:
    for j in range(warm):
        spool.enqueue(STAMP, f"warm{j}", (stamps, f"warm{j}"))
    deadline = time.monotonic() + 60
    while len(read_stamps(stamps)) < warm and time.monotonic() < deadline and daemon.alive():
        time.sleep(0.05)
    if len(read_stamps(stamps)) < warm:
        raise RuntimeError(f"the daemon did not run {warm} warm-up tasks within 60 s (see its log)")
    os.unlink(stamps)
    time.sleep(1.0)  # let the daemon settle: nothing left to claim, workers idle


def _wait_line(path: str, count: int, timeout: float = 10.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps = read_stamps(path)
        if len(stamps) >= count:
            return stamps[count - 1]
        time.sleep(0.0005)
    return None


def daemon_latency_and_idle(base: str, n: int, idle_s: float) -> dict[str, Any]:
    """Idle CPU of a daemon (see :func:`daemon_idle_cpu`), then the wake-up latency (enqueue -> handler
    start) of another one, idle but with the daemon's default settings."""
    out = daemon_idle_cpu(base, idle_s)
    path = os.path.join(base, "latency")
    stamps = os.path.join(base, "latency.stamps")
    spool = new_spool(path)
    daemon = DaemonProcess(path, 1, os.path.join(base, "daemon.log"))
    try:
        wait_idle_daemon(spool, stamps, daemon)
        lat, pub, enq = [], [], []
        for i in range(n):
            time.sleep(random.uniform(0.01, 0.03))
            t = time.time()
            spool.enqueue(STAMP, f"lat{i}", (stamps, f"{i:06d}"))
            t_pub = time.time()
            s = _wait_line(stamps, i + 1)
            if s is None:
                break
            lat.append((s - t) * 1000)
            pub.append((s - t_pub) * 1000)
            enq.append((t_pub - t) * 1000)
        out["latency_ms"] = summary(lat)
        out["latency_ms_each"] = [round(x, 3) for x in lat]
        out["latency_from_publish_ms"] = summary(pub)
        out["enqueue_call_ms"] = summary(enq)
    finally:
        daemon.stop()
    shutil.rmtree(path, ignore_errors=True)
    return out


def daemon_idle_cpu(base: str, idle_s: float) -> dict[str, Any]:
    """On-CPU time of an idle daemon's main process (all its threads) over ``idle_s`` seconds.

    The window holds the daemon's periodic work, not just the quiet between it: the daemon sweeps every
    ``idle_s`` seconds, so one sweep falls into each window (at the default interval of 30 s that is
    their real share; in a shorter window, an upper bound), and heartbeats every 5 s (its default);
    the heartbeats written in the window are counted from the heartbeat file's mtime. The CPU is
    sampled every 0.25 s, so the figures show what each wake-up cost. The wake-up latency is measured
    on another daemon, whose sweeps do not come this often.
    """
    path = os.path.join(base, "idle")
    stamps = os.path.join(base, "idle.stamps")
    spool = new_spool(path)
    # the baseline, beside it in the same window: a process that does nothing but write a heartbeat file
    floor = subprocess.Popen([sys.executable, "-c", _HEARTBEAT_ONLY, os.path.join(base, "idle-floor")])
    daemon = DaemonProcess(path, 1, os.path.join(base, "daemon.log"), ["--sweep-interval", f"{idle_s:g}"])
    out: dict[str, Any] = {"idle_sweep_interval_s": idle_s}
    try:
        wait_idle_daemon(spool, stamps, daemon)  # idle for a second after its warm-up tasks
        pid = daemon.proc.pid
        tree0 = _tree_cpu(pid)
        f0 = cpu_seconds_precise(floor.pid)
        c0, p0, t0 = cpu_seconds(pid), cpu_seconds_precise(pid), time.monotonic()
        beats, last_beat, prev, bursts = 0, _beat_mtime(path), p0, []
        fprev, fbursts = f0, []
        while (left := t0 + idle_s - time.monotonic()) > 0:
            time.sleep(min(0.25, left))
            now_cpu, beat, fnow = cpu_seconds_precise(pid), _beat_mtime(path), cpu_seconds_precise(floor.pid)
            if now_cpu - prev > 1e-4:
                bursts.append(round((now_cpu - prev) * 1000, 2))
            if fnow - fprev > 1e-4:
                fbursts.append(round((fnow - fprev) * 1000, 2))
            if beat != last_beat:
                beats, last_beat = beats + 1, beat
            prev, fprev = now_cpu, fnow
        c1, p1, t1 = cpu_seconds(pid), cpu_seconds_precise(pid), time.monotonic()
        f1 = cpu_seconds_precise(floor.pid)
        tree1 = _tree_cpu(pid)
        out["idle_cpu_main_pct"] = 100 * (p1 - p0) / (t1 - t0)  # schedstat: exact
        out["idle_cpu_heartbeat_only_pct"] = 100 * (f1 - f0) / (t1 - t0)
        out["idle_cpu_main_ticks_pct"] = 100 * (c1 - c0) / (t1 - t0)  # utime+stime: 10 ms ticks
        out["idle_cpu_tree_pct"] = 100 * (tree1 - tree0) / (t1 - t0)
        out["idle_window_s"] = t1 - t0
        out["idle_heartbeats"] = beats
        out["idle_bursts_ms"] = bursts  # main-process CPU of each 0.25 s in which it ran (> 0.1 ms)
        out["idle_heartbeat_only_bursts_ms"] = fbursts  # the same of the heartbeat-only process
    finally:
        daemon.stop()
        floor.kill()
        floor.wait()
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(os.path.join(base, "idle-floor"), ignore_errors=True)
    return out


#: the least an idle daemon does: every 5 s (the daemon's default heartbeat) write a small JSON file to a
#: temporary name and rename it into place; what waking up costs on this machine, measured beside the daemon
_HEARTBEAT_ONLY = """
import json, os, sys, time
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
while True:
    tmp = os.path.join(d, "beat.tmp")
    with open(tmp, "w") as f:
        json.dump({"beat": time.time(), "pid": os.getpid()}, f)
    os.rename(tmp, os.path.join(d, "beat.json"))
    time.sleep(5.0)
"""


def _beat_mtime(spool_path: str) -> float:
    """The mtime of the (only) daemon's heartbeat file: a change is a heartbeat written."""
    try:
        return max((e.stat().st_mtime for e in os.scandir(os.path.join(spool_path, "daemons"))), default=0.0)
    except OSError:
        return 0.0


def _tree_cpu(root: int) -> float:
    """On-CPU seconds (schedstat) of ``root`` and all its descendants (the fork server and the workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += cpu_seconds_precise(pid)
        except OSError:
            pass
        todo.extend(children.get(pid, []))
    return total


# --------------------------------------------------------------------------- wake-up baselines


IN_CREATE, IN_MOVED_TO = 0x100, 0x80


def _claim_all(floor: FloorSpool, stamps: str, woke: float) -> None:
    """Claim what is waiting; one stamp (the wake-up time) per task claimed, none for a spurious event."""
    while (name := floor.claim()) is not None:
        with open(stamps, "a") as f:
            f.write(f"{woke:.6f}\n")
        floor.complete(name)


def _raw_inotify_waiter(watch: str, stamps: str, ready: str) -> None:
    """Floor consumer woken by raw inotify: stamp, then claim the task by rename."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(0)
    libc.inotify_add_watch(fd, watch.encode(), IN_MOVED_TO | IN_CREATE)
    floor = FloorSpool(os.path.dirname(watch))
    open(ready, "w").close()
    while True:
        buf = os.read(fd, 65536)
        woke = time.time()
        off = 0
        while off < len(buf):
            _, _, _, length = struct.unpack_from("iIII", buf, off)
            off += 16 + length
        _claim_all(floor, stamps, woke)


def _watchdog_waiter(watch: str, stamps: str, ready: str) -> None:
    """Floor consumer woken by watchdog's default observer, used naively: stamp, then claim by rename."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    floor = FloorSpool(os.path.dirname(watch))

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            _claim_all(floor, stamps, time.time())

    observer = Observer()
    observer.schedule(Handler(), watch, recursive=False)
    observer.start()
    open(ready, "w").close()
    while True:
        time.sleep(3600)


def _arrivals_waiter(watch: str, stamps: str, ready: str) -> None:
    """Floor consumer woken by spoolatp's own watchdog observer (arrivals-only mask): the daemon's event source."""
    from watchdog.events import FileSystemEventHandler

    from spoolatp.daemon import _make_observer

    floor = FloorSpool(os.path.dirname(watch))

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            _claim_all(floor, stamps, time.time())

    observer = _make_observer(None)
    observer.schedule(Handler(), watch, recursive=False)
    observer.start()
    open(ready, "w").close()
    while True:
        time.sleep(3600)


def baseline_latency(base: str, kind: str, n: int) -> dict[str, float]:
    """Wake-up latency of a floor consumer blocked in raw inotify or in a naive watchdog observer."""
    path = os.path.join(base, f"wake-{kind}")
    floor = FloorSpool(path)
    stamps, ready = path + ".stamps", path + ".ready"
    code = (
        f"import sys; sys.path.insert(0, {BENCH_DIR!r}); import spoolbench; "
        f"spoolbench._{kind}_waiter({os.path.join(path, 'new')!r}, {stamps!r}, {ready!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env_with_plugin())
    lat: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        for i in range(n):
            time.sleep(random.uniform(0.01, 0.03))
            name = floor.prepare(PAYLOAD)
            t = time.time()  # just before the publishing rename: wake-up alone
            floor.publish(name)
            s = _wait_line(stamps, i + 1, timeout=5)
            if s is None:
                break
            lat.append((s - t) * 1000)
    finally:
        proc.kill()
        proc.wait()
    shutil.rmtree(path, ignore_errors=True)
    return summary(lat)
