"""Benchmarks of spoolatp against the file system's floor and against huey, dirq, persist-queue and RQ.

    python bench/run.py                  full run (~10-15 min): installs the peers into bench/.venv first
    python bench/run.py --quick          small counts, about a minute, peers only if already importable
    python bench/run.py --json out.json  also write every figure, with machine, file systems and versions

Every figure is printed beside a baseline measured in the same run, on the
same file system, with the ratio between them: these machines are noisy, so
absolute numbers from different runs do not compare, ratios from one run do.
Figures are printed, never asserted; the exit code is 0 unless the benchmark
itself broke. See docs/bench.md for how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402
import spoolbench as sb  # noqa: E402
from common import BENCH_DIR, filesystem_of  # noqa: E402
from designfloor import OneFileFloor  # noqa: E402


@dataclasses.dataclass
class Counts:
    rounds: int
    api: int
    api_disk: int
    e2e: int
    e2e_rq: int
    latency: int
    latency_watchdog: int
    idle_s: float  # the idle window; the idle daemon sweeps once in it (30 s: the default interval)
    depths: list[int]
    depth_big: int  # tmpfs only; 0 = skip
    peer_depths: list[int]
    window: float
    durable: int
    durable_disk: int


FULL = Counts(
    3, 5000, 3000, 5000, 500, 200, 40, 30.0, [1000, 10000, 100000], 1_000_000, [1000, 10000, 50000], 1.5, 2000, 300
)
QUICK = Counts(1, 400, 300, 300, 40, 30, 4, 2.0, [200, 2000], 0, [200, 2000], 0.5, 200, 50)

# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Row:
    fs: str
    section: str
    figure: str
    value: float | None
    unit: str
    baseline: str = ""
    base_value: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    reach: str = ""  # a goal row: what the same run's bound for it says (see section_api)


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.skipped: list[str] = []

    def add(
        self,
        fs: str,
        section: str,
        figure: str,
        value: float | None,
        unit: str,
        baseline: str = "",
        base_value: float | None = None,
        *,
        higher_is_better: bool = True,
        goal: float | None = None,
        goal_text: str = "",
        note: str = "",
        limit: float | None = None,
        reach: str = "",
    ) -> Row:
        ratio = None
        if value is not None and base_value:
            ratio = value / base_value
        met = None
        if goal is not None and ratio is not None:
            met = ratio >= goal if higher_is_better else ratio <= goal
        if limit is not None and value is not None:
            goal_text, met = f"<= {limit:g} {unit}", value <= limit
        row = Row(fs, section, figure, value, unit, baseline, base_value, ratio, goal_text, met, note, reach)
        self.rows.append(row)
        print(_format_row(row), flush=True)
        return row

    def absolute(
        self, fs: str, section: str, figure: str, value: float | None, unit: str, limit: float, note: str = ""
    ) -> Row:
        met = None if value is None else value <= limit
        row = Row(fs, section, figure, value, unit, "", None, None, f"<= {limit:g} {unit}", met, note)
        self.rows.append(row)
        print(_format_row(row), flush=True)
        return row

    def skip(self, fs: str, what: str, reason: str) -> None:
        line = f"[{fs}] skipped {what}: {reason}"
        if any(reason in seen for seen in self.skipped) and "broke" not in reason:
            self.skipped.append(line)
            return  # said once already
        self.skipped.append(line)
        print("  " + line, flush=True)


def _first_claim_text(r: dict[str, Any]) -> str:
    return f"  first claim {_num(r['first_claim_s'] * 1000, 'ms')} ms; {r['listings']} listings/{r['claimed']} claims"


def _sub(text: str, right: str = "") -> str:
    """An indented line under a figure: ``text`` in the figure column, ``right`` in the baseline column."""
    return f"{'':<6} {'':<8} {text:<44} {'':>10} {'':<7} {right:<40}".rstrip()


def _num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit in ("ms", "us", "%") or abs(v) < 100:
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return f"{v:,.0f}"


def _format_row(r: Row) -> str:
    verdict = {True: "MET", False: "MISSED", None: ""}[r.met]
    ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
    base = f"{r.baseline} {_num(r.base_value, r.unit)}" if r.baseline else ""
    line = (
        f"{r.fs:<6} {r.section:<8} {r.figure:<44} {_num(r.value, r.unit):>10} {r.unit:<7} "
        f"{base:<40} {ratio:>7}  {r.goal:<14} {verdict}"
    )
    if r.reach:
        line += f"  ({r.reach})"
    return f"{line}  ({r.note})" if r.note and r.section in ("wake-up", "idle") else line


HEADER = (
    f"{'fs':<6} {'section':<8} {'figure':<44} {'value':>10} {'unit':<7} "
    f"{'baseline (same run, same fs)':<40} {'ratio':>7}  {'goal':<14} verdict"
)

# --------------------------------------------------------------------------- sections


def section_api(rep: Report, fs: str, base: str, c: Counts, durable: bool) -> None:
    sec = "durable" if durable else "api"
    n = (c.durable_disk if fs != "tmpfs" else c.durable) if durable else (c.api if fs == "tmpfs" else c.api_disk)
    for procs in (1, 2) if not durable else (1,):
        samples: dict[str, list[float]] = {}
        for _ in range(c.rounds):  # alternate floor and spoolatp; keep the best of each (noise only slows)
            for k, v in sb.api_rates(base, n, procs, durable).items():
                samples.setdefault(k, []).append(v)
        rep.raw[f"{fs}.{sec}.{procs}"] = samples
        best = {k: max(v) for k, v in samples.items()}
        checks = sb.checks_cost(5000) if procs == 1 else None  # per process: the 1-producer rows
        if checks is not None:
            rep.raw[f"{fs}.{sec}.checks_s"] = checks
        for op, what, goal in (("enqueue", "enqueue", 0.7), ("consume", "dequeue+start+finish", 0.5)):
            who = f"{procs} {'producer' if op == 'enqueue' else 'consumer'}{'s' if procs > 1 else ''}"
            reach = ""
            if checks is not None:  # no implementation of spoolatp's layout with its checks can beat this
                bound = 1.0 / (1.0 / best[f"design.{op}"] + checks[op]) / best[f"floor.{op}"]
                reach = f"{'out of reach in this layout: ' if bound < goal else ''}bound {bound:.2f}x"
            rep.add(
                fs,
                sec,
                f"{what}, {who}",
                best[f"spoolatp.{op}"],
                "tasks/s",
                "floor",
                best[f"floor.{op}"],
                goal=goal,
                goal_text=f">= {goal}x floor",
                reach=reach,
            )
            rep.add(
                fs, sec, f"  design floor {what}, {who}", best[f"design.{op}"], "tasks/s", "floor", best[f"floor.{op}"]
            )
            rep.add(
                fs,
                sec,
                f"  one-file design floor {what}, {who}",
                best[f"onefile.{op}"],
                "tasks/s",
                "floor",
                best[f"floor.{op}"],
            )
            rep.add(
                fs,
                sec,
                f"  spoolatp {what}, {who}",
                best[f"spoolatp.{op}"],
                "tasks/s",
                "design floor",
                best[f"design.{op}"],
            )
            if op == "consume":  # the daemon's workers dequeue and start in one step
                rep.add(
                    fs,
                    sec,
                    f"  claim_and_start+finish, {who}",
                    best["atonce.consume"],
                    "tasks/s",
                    "floor",
                    best["floor.consume"],
                )
            if checks is not None:  # a bound: the layout's bare file operations plus the checks, nothing else
                for layout, name in (("design", "design floor"), ("onefile", "one-file design floor")):
                    rep.add(
                        fs,
                        sec,
                        f"  bound: {name} + the checks alone, {who}",
                        1.0 / (1.0 / best[f"{layout}.{op}"] + checks[op]),
                        "tasks/s",
                        "floor",
                        best[f"floor.{op}"],
                        note=f"the checks alone: {checks[op] * 1e6:.1f} us per task",
                    )


def section_peers_api(rep: Report, fs: str, base: str, c: Counts, durable: bool) -> None:
    sec = "durable" if durable else "api"
    n = (c.durable_disk if fs != "tmpfs" else c.durable) if durable else (c.api if fs == "tmpfs" else c.api_disk)
    floor = sb.api_rates(base, n, 1, durable, systems=("floor",))  # the floor again, beside the peers
    fe, fc = floor["floor.enqueue"], floor["floor.consume"]
    rows: list[tuple[str, Callable[[], dict[str, float]]]] = []
    if (why := peers.missing("huey")) is None:
        rows.append(
            (
                "huey SqliteHuey" + (" fsync" if durable else ""),
                lambda: peers.huey_api(base, "sqlite", n, fsync=durable),
            )
        )
        if not durable:
            rows.append(("huey FileHuey", lambda: peers.huey_api(base, "file", n)))
    else:
        rep.skip(fs, "huey", why)
    if not durable:
        if (why := peers.missing("dirq")) is None:
            rows.append(("dirq QueueSimple", lambda: peers.dirq_api(base, n)))
        else:
            rep.skip(fs, "dirq", why)
        if (why := peers.missing("persist-queue")) is None:
            pq = peers.persist_api(base, n)
            rows.append(("persist-queue Queue", lambda: pq["file"]))
            rows.append(("persist-queue SQLiteQueue", lambda: pq["sqlite"]))
        else:
            rep.skip(fs, "persist-queue", why)
    for name, fn in rows:
        r = fn()
        rep.raw[f"{fs}.{sec}.{name}"] = r
        rep.add(fs, sec, f"{name}: enqueue", r["enqueue"], "tasks/s", "floor", fe)
        rep.add(fs, sec, f"{name}: dequeue+execute", r["consume"], "tasks/s", "floor", fc)


def section_daemon(rep: Report, fs: str, base: str, c: Counts, durable: bool, rq: dict[str, Any] | None) -> None:
    sec = "durable" if durable else "daemon"
    n = (c.durable_disk if fs != "tmpfs" else c.durable) if durable else c.e2e
    # two interleaved rounds in full mode, best of each: a shared machine only ever slows a run down
    rounds = 2 if c.rounds > 1 else 1
    samples: dict[str, list[float]] = {}

    def keep(name: str, result: dict[str, Any]) -> None:
        rep.raw.setdefault(f"{fs}.{sec}.runs", []).append({"name": name, **result})
        if result.get("rate") is not None:
            samples.setdefault(name, []).append(result["rate"])

    huey_ok = (why := peers.missing("huey")) is None
    if not huey_ok:
        rep.skip(fs, "huey consumers", str(why))
    for _ in range(rounds):
        for w in (1, 2):
            keep(f"spoolatp-{w}", sb.daemon_throughput(base, w, n, durable))
            keep(f"design-{w}", sb.design_daemon_throughput(base, w, n, durable))
            keep(f"onefile-{w}", sb.design_daemon_throughput(base, w, n, durable, OneFileFloor))
            if huey_ok:
                for wt in ("thread", "process"):  # the peer's better worker type is the baseline
                    keep(f"huey-sqlite-{w}", peers.huey_consumer(base, "sqlite", w, n, wt, fsync=durable))
    if huey_ok and not durable:
        for w in (1, 2):
            for wt in ("thread", "process"):
                keep(f"huey-file-{w}", peers.huey_consumer(base, "file", w, min(n, 2000), wt))
    if not durable:
        # the cost of a log line per task: the default logs a task FINISHED at DEBUG only
        keep("spoolatp-verbose-2", sb.daemon_throughput(base, 2, n, durable, ["--log-level", "DEBUG"]))
    best = {k: max(v) for k, v in samples.items()}
    ours = {w: {"rate": best.get(f"spoolatp-{w}")} for w in (1, 2)}
    design = {w: {"rate": best.get(f"design-{w}")} for w in (1, 2)}
    onefile = {w: {"rate": best.get(f"onefile-{w}")} for w in (1, 2)}
    verbose = {"rate": best["spoolatp-verbose-2"]} if "spoolatp-verbose-2" in best else None
    huey: dict[str, dict[int, float | None]] = {}
    for kind in ("sqlite", "file"):
        if f"huey-{kind}-1" in best or f"huey-{kind}-2" in best:
            huey[kind] = {w: best.get(f"huey-{kind}-{w}") for w in (1, 2)}
    for w in (1, 2):
        rate = ours[w]["rate"]
        label = f"end to end, {w} worker{'s' if w > 1 else ''}, {n} tasks"
        if "sqlite" in huey:
            rep.add(
                fs,
                sec,
                label,
                rate,
                "tasks/s",
                f"SqliteHuey{' fsync' if durable else ''} consumer",
                huey["sqlite"][w],
                goal=1.5 if w == 2 else None,
                goal_text=">= 1.5x" if w == 2 else "",
            )
        else:
            rep.add(fs, sec, label, rate, "tasks/s")
        if "file" in huey:
            rep.add(fs, sec, label, rate, "tasks/s", "FileHuey consumer", huey["file"][w])
        rep.add(fs, sec, label, rate, "tasks/s", "design-floor daemon", design[w]["rate"])
        one = f"  one-file design-floor daemon, {w} worker{'s' if w > 1 else ''}"
        rep.add(fs, sec, one, onefile[w]["rate"], "tasks/s", "design-floor daemon", design[w]["rate"])
        if "sqlite" in huey:
            huey_name = f"SqliteHuey{' fsync' if durable else ''} consumer"
            rep.add(fs, sec, one, onefile[w]["rate"], "tasks/s", huey_name, huey["sqlite"][w])
        if w == 2 and verbose:
            debug = "  the same with --log-level DEBUG (a line per task)"
            rep.add(fs, sec, debug, verbose["rate"], "tasks/s", "with INFO (default)", rate)
        if rq and f"e2e_{w}" in rq and rq[f"e2e_{w}"]["rate"]:
            rep.add(
                fs,
                sec,
                label,
                rate,
                "tasks/s",
                "RQ rq worker",
                rq[f"e2e_{w}"]["rate"],
                goal=10 if w == 2 else None,
                goal_text=">= 10x" if w == 2 else "",
            )


def section_rq(rep: Report, fs: str, base: str, c: Counts, into: dict[str, Any]) -> None:
    """RQ's figures; its end-to-end rates land in ``into`` for the daemon section's rows."""
    if (why := peers.missing("rq")) is not None:
        rep.skip(fs, "RQ", why)
        return
    r = peers.rq_figures(base, c.api, c.e2e_rq, [1, 2])
    rep.raw[f"{fs}.rq"] = r
    floor = sb.api_rates(base, c.api, 1, False, systems=("floor",))
    rep.add(fs, "api", "RQ: enqueue (redis on 127.0.0.1)", r["enqueue"], "tasks/s", "floor", floor["floor.enqueue"])
    into.update(r)


def section_latency(rep: Report, fs: str, base: str, c: Counts) -> None:
    raw = sb.baseline_latency(base, "raw_inotify", c.latency)
    naive = sb.baseline_latency(base, "watchdog", c.latency_watchdog)
    try:
        arrivals: dict[str, float] | None = sb.baseline_latency(base, "arrivals", c.latency)
    except Exception as exc:  # spoolatp.daemon._make_observer is private and may move
        arrivals = None
        rep.skip(fs, "latency of spoolatp's observer alone", f"{type(exc).__name__}: {exc}")
    ours = sb.daemon_latency_and_idle(base, c.latency, c.idle_s)
    rep.raw[f"{fs}.latency"] = {
        "raw_inotify": raw,
        "watchdog_naive": naive,
        "watchdog_arrivals": arrivals,
        "spoolatp": ours,
    }
    lat, pub, enq = ours["latency_ms"], ours["latency_from_publish_ms"], ours["enqueue_call_ms"]
    n = int(lat["n"])
    for q, limit in (("p50", 5.0), ("p99", 20.0)):
        rep.add(
            fs,
            "wake-up",
            f"enqueue() call -> handler start, {q} (n={n})",
            lat[q],
            "ms",
            "raw inotify",
            raw[q],
            higher_is_better=False,
            limit=limit,
            note=f"the enqueue() call itself took {enq[q]:.2f} ms ({q})",
        )
        rep.add(
            fs,
            "wake-up",
            f"  enqueue() return -> handler start, {q}",
            pub[q],
            "ms",
            "raw inotify",
            raw[q],
            higher_is_better=False,
            limit=limit,
        )
        print(_sub("", "naive watchdog Observer " + _num(naive[q], "ms")))
        if arrivals:
            print(_sub("", "its arrivals-only observer alone " + _num(arrivals[q], "ms")))
    rep.absolute(
        fs,
        "idle",
        "daemon main process CPU while idle (all threads)",
        ours["idle_cpu_main_pct"],
        "%",
        0.5,
        note=f"schedstat over {ours['idle_window_s']:.1f} s with {ours['idle_heartbeats']} heartbeats and a sweep "
        f"every {ours['idle_sweep_interval_s']:g} s; costliest wake-up "
        f"{max(ours['idle_bursts_ms'], default=0.0):.1f} ms; utime+stime ticks say "
        f"{ours['idle_cpu_main_ticks_pct']:.2f} %; whole tree {ours['idle_cpu_tree_pct']:.2f} %",
    )
    rep.add(
        fs,
        "idle",
        "  the same, against a process that only writes a heartbeat every 5 s",
        ours["idle_cpu_main_pct"],
        "%",
        "heartbeat-only process",
        ours["idle_cpu_heartbeat_only_pct"],
        higher_is_better=False,
    )
    # what one wake-up costs, whatever it does: the median of each process's bursts in the same window
    if ours["idle_bursts_ms"] and ours.get("idle_heartbeat_only_bursts_ms"):
        rep.add(
            fs,
            "idle",
            "  CPU per wake-up (median), the same",
            statistics.median(ours["idle_bursts_ms"]),
            "ms",
            "heartbeat-only process",
            statistics.median(ours["idle_heartbeat_only_bursts_ms"]),
            higher_is_better=False,
        )


def section_depth(rep: Report, fs: str, base: str, c: Counts, depths: list[int]) -> None:
    res = sb.depth_costs(os.path.join(base, "depth"), depths, c.window, c.rounds)
    rep.raw[f"{fs}.depth"] = res
    first = res[depths[0]]["claim_us"]
    for d in depths:
        r = res[d]
        goal = 1.5 if d == 100_000 else None
        rep.add(
            fs,
            "depth",
            f"claim() per task at {d:,} queued",
            r["claim_us"],
            "us",
            f"claim() at {depths[0]:,}",
            first,
            higher_is_better=False,
            goal=goal,
            goal_text="<= 1.5x" if goal else "",
            note=f"first claim (lists the queue) {r['first_claim_s'] * 1000:.1f} ms; "
            f"{r['listings']} listings of enqueued/ in {r['claimed']} claims; "
            f"floor {r.get('floor_claim_us', 0):.1f} us",
        )
        if "floor_claim_us" in r:
            text = _first_claim_text(r)
            print(_sub(text, "floor claim " + _num(r["floor_claim_us"], "us") + " us"))
    shutil.rmtree(os.path.join(base, "depth"), ignore_errors=True)
    shutil.rmtree(os.path.join(base, "depth-floor"), ignore_errors=True)


def section_peer_depth(rep: Report, fs: str, base: str, c: Counts) -> None:
    d0 = c.peer_depths[0]
    found: list[tuple[str, dict[int, float]]] = []
    if (why := peers.missing("huey")) is None:
        found.append(("huey FileHuey dequeue", peers.huey_depth(base, "file", c.peer_depths, c.window)))
        found.append(("huey SqliteHuey dequeue", peers.huey_depth(base, "sqlite", c.peer_depths, c.window)))
    else:
        rep.skip(fs, "huey depth", why)
    if (why := peers.missing("dirq")) is None:
        found.append(("dirq QueueSimple lock+get", peers.dirq_depth(base, c.peer_depths, c.window)))
    else:
        rep.skip(fs, "dirq depth", why)
    for name, res in found:
        rep.raw[f"{fs}.depth.{name}"] = res
        for d in c.peer_depths[1:]:
            rep.add(
                fs,
                "depth",
                f"{name} per task at {d:,}",
                res[d],
                "us",
                f"same at {d0:,}",
                res[d0],
                higher_is_better=False,
            )


# --------------------------------------------------------------------------- the run


def filesystems(quick: bool, only: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for name, parent in (("tmpfs", "/dev/shm"), ("disk", "/var/tmp")):
        if only and name not in only:
            continue
        if os.path.isdir(parent) and os.access(parent, os.W_OK):
            kind = filesystem_of(parent)
            label = "tmpfs" if kind == "tmpfs" else kind or name
            if name == "disk" and label == "tmpfs":
                continue
            out.append((label, parent))
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    vers = {}
    for dist in ("spoolatp", "watchdog", "pluggy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            vers[dist] = importlib.metadata.version(dist)
    vers.update({k: v for k, v in peers.versions().items() if v})
    return {
        "spoolatp": _source_of_spoolatp(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": mem,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "versions": vers,
        "loadavg_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _source_of_spoolatp() -> dict[str, Any]:
    """Where the measured spoolatp was imported from, and its git commit (plus whether the tree was dirty)."""
    import spoolatp

    where = os.path.dirname(os.path.abspath(spoolatp.__file__))
    out: dict[str, Any] = {"path": where}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", where]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            out["commit"] = head.stdout.strip()
            dirty = subprocess.run(
                [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
            )
            out["dirty"] = bool(dirty.stdout.strip())
    return out


def ensure_venv(args: argparse.Namespace) -> None:
    """Full mode: install the peers into bench/.venv and re-run this script with its interpreter."""
    venv_python = os.path.join(BENCH_DIR, ".venv", "bin", "python")
    if (
        args.quick
        or args.no_setup
        or os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(BENCH_DIR, ".venv"))
    ):
        return
    print("setting up bench/.venv with the peers (bench/setup.sh) ...", flush=True)
    subprocess.run(
        ["sh", os.path.join(BENCH_DIR, "setup.sh")],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        stdout=subprocess.DEVNULL,
    )
    os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts (CI): about a minute, no setup, no 1M depth")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--fs", action="append", choices=["tmpfs", "disk"], help="only this file system (repeatable)")
    parser.add_argument(
        "--only",
        action="append",
        choices=["api", "daemon", "latency", "depth", "peers", "durable"],
        help="only these sections",
    )
    parser.add_argument(
        "--no-setup", action="store_true", help="do not create bench/.venv; skip peers that are missing"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip every peer")
    args = parser.parse_args(argv)
    ensure_venv(args)
    c = QUICK if args.quick else FULL
    want = set(args.only or ["api", "daemon", "latency", "depth", "peers", "durable"])
    if args.no_peers:
        peers.missing = lambda peer: "--no-peers"  # type: ignore[assignment]
    rep = Report()
    meta = machine()
    started = time.monotonic()
    print(
        f"spoolatp bench ({'quick' if args.quick else 'full'}) on {meta['cpu']}, {meta['cpus']} CPUs, "
        f"{meta['kernel']}, Python {meta['python']}; load average {meta['loadavg_start'][0]:.2f}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    src = meta["spoolatp"]
    print(
        f"spoolatp from {src['path']}"
        + (f" at {src['commit'][:10]}{' + uncommitted changes' if src.get('dirty') else ''}" if "commit" in src else "")
    )
    fss = filesystems(args.quick, args.fs)
    meta["filesystems"] = {label: {"path": parent, "type": filesystem_of(parent)} for label, parent in fss}
    print(HEADER)
    failures = 0
    for label, parent in fss:
        base = tempfile.mkdtemp(prefix="spoolatp-bench-", dir=parent)
        steps: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
        rq: dict[str, Any] = {}
        if "api" in want:
            steps.append(("api", section_api, (rep, label, base, c, False)))
        if "peers" in want:
            steps.append(("peers api", section_peers_api, (rep, label, base, c, False)))
        if "daemon" in want:
            if "peers" in want:
                steps.append(("rq", section_rq, (rep, label, base, c, rq)))
            steps.append(("daemon", section_daemon, (rep, label, base, c, False, rq)))
        if "latency" in want:
            steps.append(("latency", section_latency, (rep, label, base, c)))
        if "depth" in want:
            steps.append(("depth", section_depth, (rep, label, base, c, c.depths)))
            if "peers" in want:
                steps.append(("peer depth", section_peer_depth, (rep, label, base, c)))
        if "durable" in want:
            steps.append(("durable api", section_api, (rep, label, base, c, True)))
            if "peers" in want:
                steps.append(("durable peers", section_peers_api, (rep, label, base, c, True)))
            steps.append(("durable daemon", section_daemon, (rep, label, base, c, True, None)))
        for name, step, step_args in steps:
            t0 = time.monotonic()
            try:
                step(*step_args)
            except Exception:
                failures += 1
                rep.skip(label, name, "the benchmark broke:\n" + traceback.format_exc())
            rep.raw.setdefault("section_seconds", {})[f"{label}.{name}"] = round(time.monotonic() - t0, 1)
        shutil.rmtree(base, ignore_errors=True)
    if "depth" in want and c.depth_big and (not args.fs or "tmpfs" in args.fs):
        t0 = time.monotonic()
        mnt, where = sb.depth_filesystem(c.depth_big)
        if not os.path.isdir(where):
            rep.skip("tmpfs", f"depth {c.depth_big:,}", where)
        else:
            base = tempfile.mkdtemp(prefix="spoolatp-bench-", dir=where)
            try:
                res = sb.depth_costs(
                    os.path.join(base, "depth"), [1000, c.depth_big], c.window, c.rounds, with_floor=False
                )
                rep.raw["tmpfs.depth.big"] = res
                r, r0 = res[c.depth_big], res[1000]
                rep.add(
                    "tmpfs",
                    "depth",
                    f"claim() per task at {c.depth_big:,} queued",
                    r["claim_us"],
                    "us",
                    "claim() at 1,000",
                    r0["claim_us"],
                    higher_is_better=False,
                    note=f"first claim {r['first_claim_s'] * 1000:.0f} ms; "
                    f"{r['listings']} listings in {r['claimed']} claims; on {where}",
                )
                text = _first_claim_text(r)
                print(f"{'':<6} {'':<8} {text:<44}")
            except Exception:
                failures += 1
                rep.skip("tmpfs", f"depth {c.depth_big:,}", "the benchmark broke:\n" + traceback.format_exc())
            finally:
                if mnt:
                    sb.unmount(mnt)
                else:
                    shutil.rmtree(base, ignore_errors=True)
        rep.raw.setdefault("section_seconds", {})["tmpfs.depth big"] = round(time.monotonic() - t0, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    print_summary(rep, meta)
    if args.json:
        doc = {
            "meta": meta,
            "mode": "quick" if args.quick else "full",
            "counts": dataclasses.asdict(c),
            "figures": [dataclasses.asdict(r) for r in rep.rows],
            "skipped": rep.skipped,
            "raw": rep.raw,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"figures written to {args.json}")
    return 1 if failures else 0


def print_summary(rep: Report, meta: dict[str, Any]) -> None:
    goals = [r for r in rep.rows if r.met is not None]
    print()
    print(
        f"goals: {sum(r.met for r in goals)} met, {sum(not r.met for r in goals)} missed "
        f"(run took {meta['seconds']:.0f} s; "
        f"load average {meta['loadavg_start'][0]:.2f} -> {meta['loadavg_end'][0]:.2f})"
    )
    for r in goals:
        if not r.met:
            ratio = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else f"{_num(r.value, r.unit)} {r.unit}"
            reach = f"; {r.reach}" if r.reach else ""
            print(f"  MISSED [{r.fs}] {r.section}: {r.figure}: {ratio} (goal {r.goal}{reach})")
    if rep.skipped:
        print(f"skipped: {len(rep.skipped)} (see above)")


if __name__ == "__main__":
    raise SystemExit(main())
