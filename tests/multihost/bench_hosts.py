"""Throughput by host count on the multi-host rig: run by hand, never as a test.

    python tests/multihost/bench_hosts.py --fs sshfs --tasks 2000 --hosts 1 2 3

For each host count k: a fresh spool, TASKS ``Mark`` tasks enqueued through
h1's mount first, then daemons on h1..hk (the suite's options: 2 workers,
polling every 0.5 s); the time from their start until every task ended, read
on the server's side. Prints one line per k and exits non-zero if a task did
not finish exactly once. Needs what the suite needs (root, FUSE, the rig's
packages); the rig is torn down at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from rigkit import HOSTS, Cluster, Rig, audit, lock_machine, make_spool, read_markers, task_ids, wait_ended


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fs", choices=("sshfs", "glusterfs"), default="sshfs")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3])
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the rig comes down when told to stop
    rig_dir = Path(f"/tmp/spoolatp-bench-{a.fs}")
    env = {**os.environ, "RIG_DIR": str(rig_dir), "RIG_FS": a.fs, "RIG_HOSTS": "3", "RIG_INSTALL": "0"}
    rig = Rig(a.fs, rig_dir, env)
    bad = 0
    fd = lock_machine()
    try:
        rig.up()
        for k in a.hosts:
            name = f"bench{k}"
            spool = make_spool(rig.mount("h1") / name, timeout=3600)
            t0 = time.monotonic()
            for task_id in task_ids("t", a.tasks):
                spool.enqueue("Mark", task_id, {"path": f"markers-{name}"})
            enq = time.monotonic() - t0
            cluster = Cluster(rig, name)
            try:
                t0 = time.monotonic()
                for h in HOSTS[:k]:
                    cluster.start(h, name)
                took = wait_ended(rig.export / name, a.tasks, timeout=3600, stall=60, stop_on_loss=False)
            finally:
                cluster.stop_all()
            result = audit(rig.export / name, task_ids("t", a.tasks), read_markers(rig, f"markers-{name}"))
            ok = not result.missing and not result.finished_not_once() and not result.not_finished()
            lost = f"{len(result.missing)} lost (quarantined), " if result.missing else ""
            bad += not ok
            print(
                f"{a.fs} hosts={k} workers/host=2 tasks={a.tasks}: drained in {took:.1f} s = "
                f"{a.tasks / took:.1f} tasks/s; per host {result.per_host()}; enqueue from one host "
                f"{a.tasks / enq:.0f}/s; {'ok' if ok else 'NOT finished exactly once: ' + lost + str(result.counts)}",
                flush=True,
            )
    finally:
        rig.down()
        os.close(fd)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
