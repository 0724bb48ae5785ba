"""Probe: does a network mount answer falsely when a host appends to a task it has just claimed by rename?

Compares the two task layouts a spool can have: a task as a directory (the
journal is a file inside it, spoolatp's format 1) or as one file (the journal
appended to the task file itself, the bench's ``OneFileFloor``). Run the same
command on two rig hosts at once (it is not a test; nothing runs it in CI)::

    RIG_FS=glusterfs RIG_HOSTS=2 tests/multihost/rig/rig.sh up
    tests/multihost/rig/onhost.sh h1 python tests/multihost/rig/probe_layouts.py dir 30 &
    tests/multihost/rig/onhost.sh h2 python tests/multihost/rig/probe_layouts.py dir 30
    (the same with "file"), then rig.sh down

Each host, for SECONDS: publishes tasks (written in tmp/, renamed into q/),
lists q/ and claims by rename into r/HOST/, appends a journal line at once
(twice), renames the task into done/ and appends again. An append that fails
(ENOENT, ESTALE) is retried every 5 ms for up to 15 s. It prints, per host:
claims, the appends that failed at first, by error, and those still failing
after 15 s ("gave up").

Measured on GlusterFS 10.3, 2 hosts, 4 rounds of 20-30 s each (session 4
of issue 8): directories, 18,385 claims; in 3 of the 4 rounds one host's
appends to a directory it had just claimed failed with ESTALE for more than
15 s, twice (that host then stalled). Files, 26,820 claims: no false answer.
"""

from __future__ import annotations

import errno
import os
import sys
import time

RETRY_FOR = 15.0


def main(kind: str, seconds: float) -> dict[str, object]:
    root, host = os.environ["RIG_SPOOL"], os.environ["RIG_HOST"]
    for sub in ("q", f"r/{host}", "done", "tmp"):
        os.makedirs(f"{root}/{sub}", exist_ok=True)
    counts = {"claimed": 0, "gave up": 0}
    failed_first: dict[str, int] = {}
    gave_up_on: list[str] = []

    def append(path: str) -> None:
        target = path if kind == "file" else f"{path}/journal"
        flags = os.O_WRONLY | os.O_APPEND | (0 if kind == "file" else os.O_CREAT)
        started = time.monotonic()
        error = None
        while True:
            try:
                fd = os.open(target, flags, 0o660)
            except OSError as exc:
                error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                if time.monotonic() - started > RETRY_FOR:
                    counts["gave up"] += 1
                    gave_up_on.append(error)
                    return
                time.sleep(0.005)
                continue
            os.write(fd, b'{"s":2}\n')
            os.close(fd)
            break
        if error is not None:
            failed_first[error] = failed_first.get(error, 0) + 1

    seq = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(5):
            seq += 1
            name = f"{kind}-{host}-{seq}"
            tmp = f"{root}/tmp/{name}"
            if kind == "dir":
                os.mkdir(tmp)
                tmp_file = f"{tmp}/task"
            else:
                tmp_file = tmp
            fd = os.open(tmp_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
            os.write(fd, b"x" * 200)
            os.close(fd)
            os.rename(tmp, f"{root}/q/{name}")  # published whole
        for name in sorted(os.listdir(f"{root}/q"))[:10]:
            held = f"{root}/r/{host}/{name}"
            try:
                os.rename(f"{root}/q/{name}", held)  # the claim: one host's rename wins
            except OSError:
                continue
            counts["claimed"] += 1
            append(held)
            append(held)
            os.rename(held, f"{root}/done/{name}")
            append(f"{root}/done/{name}")
    return {**counts, "failed at first": failed_first, "gave up on": gave_up_on}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("dir", "file"):
        sys.exit("usage: probe_layouts.py dir|file SECONDS (on a rig host: see the docstring)")
    print(os.environ.get("RIG_HOST"), sys.argv[1], main(sys.argv[1], float(sys.argv[2])))
