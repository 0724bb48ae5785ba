"""Fixtures of the multi-host suite: one rig per backend, daemons on its hosts, figures.

Environment:

- ``SPOOLATP_MULTIHOST``: unset or ``auto`` runs the suite where it can and
  skips it, with the reason, where it cannot (not root, no /dev/fuse, no
  network namespaces, a backend's packages missing); ``require`` turns each
  such reason into a failure (CI); ``0`` skips the suite.
- ``SPOOLATP_MULTIHOST_BACKENDS``: backends to run, default ``sshfs glusterfs``.
- ``SPOOLATP_MULTIHOST_TASKS``: tasks of the throughput test: one number for
  every backend, or per backend (``sshfs=10000 glusterfs=2000``).
- ``SPOOLATP_MULTIHOST_KEEP=1``: keep each rig's directory (daemon logs,
  marker files, the export) under /tmp for a look after the run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigkit import LOCK, Cluster, Rig, lock_machine

BACKENDS = ("sshfs", "glusterfs")
#: what each backend needs on the machine (``rig.sh up`` with RIG_INSTALL=0 installs nothing)
NEEDS = {
    "sshfs": ("sshfs", "sshd", "ssh-keygen", "fusermount3", "ip", "nsenter", "unshare"),
    "glusterfs": ("glusterd", "glusterfs", "gluster", "fusermount3", "ip", "nsenter", "unshare"),
}
APT = (
    "apt-get install -y --no-install-recommends "
    "sshfs openssh-server openssh-client glusterfs-server glusterfs-client iproute2"
)

_figures: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "multihost: needs root and FUSE; builds the multi-host rig (select with -m multihost)"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _figures:
        terminalreporter.section("multi-host figures")
        for line in _figures:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def figures() -> list[str]:
    """Lines printed after the run, in a 'multi-host figures' section."""
    return _figures


def _which(tool: str) -> bool:
    return shutil.which(tool) is not None or shutil.which(tool, path="/usr/sbin:/sbin") is not None


def not_wanted(fs: str) -> str | None:
    """Why the suite was told not to run backend ``fs`` (None if it was not)."""
    if os.environ.get("SPOOLATP_MULTIHOST", "auto") == "0":
        return "multi-host suite disabled by SPOOLATP_MULTIHOST=0"
    wanted = os.environ.get("SPOOLATP_MULTIHOST_BACKENDS", " ".join(BACKENDS)).split()
    if fs not in wanted:
        return f"backend {fs} not in SPOOLATP_MULTIHOST_BACKENDS={' '.join(wanted)}"
    return None


def cannot_run(fs: str) -> str | None:
    """Why this machine cannot run the rig with backend ``fs`` (None if it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces, veths, FUSE mounts, a server on the rig's bridge)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse (FUSE mounts of the shared spool)"
    if not os.path.isdir("/proc/self/ns") or not os.path.exists("/proc/self/ns/net"):
        return "needs network namespaces"
    missing = [t for t in NEEDS[fs] if not _which(t)]
    if missing:
        return f"{fs} rig needs {', '.join(missing)}: {APT}"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("SPOOLATP_MULTIHOST") == "require":
        pytest.fail(f"SPOOLATP_MULTIHOST=require, but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module", params=BACKENDS)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A rig of three hosts on one backend, up for the whole module and always torn down."""
    fs: str = request.param
    told = not_wanted(fs)
    if told:
        pytest.skip(told)
    reason = cannot_run(fs)
    if reason:
        _skip_or_fail(reason)
    keep = os.environ.get("SPOOLATP_MULTIHOST_KEEP") == "1"
    rig_dir = Path(f"/tmp/spoolatp-rig-{fs}-{int(time.time())}" if keep else f"/tmp/spoolatp-rig-{fs}")
    env = {
        **os.environ,
        "RIG_DIR": str(rig_dir),
        "RIG_FS": fs,
        "RIG_HOSTS": "3",
        "RIG_INSTALL": "0",
        "RIG_KEEP": "1" if keep else "0",
        # the partition test cuts a host off for longer than this; GlusterFS's default is 42 s
        "RIG_GLUSTER_OPTS": "network.ping-timeout=8",
    }
    the_rig = Rig(fs, rig_dir, env)
    try:
        fd = lock_machine()
    except BlockingIOError:
        _skip_or_fail(f"another multi-host run holds {LOCK} for more than 15 minutes")
    try:
        t0 = time.monotonic()
        try:
            the_rig.up()
        except Exception as exc:
            the_rig.down()
            _skip_or_fail(f"the {fs} rig did not come up: {exc}")
        _figures.append(f"{fs}: rig up (3 hosts) in {time.monotonic() - t0:.1f} s")
        yield the_rig
    finally:
        try:
            t0 = time.monotonic()
            said = the_rig.down()
            took = time.monotonic() - t0
            _figures.append(f"{fs}: rig down in {took:.1f} s")
            if took > 10:  # something did not stop when asked: rig.sh says what
                _figures.extend(f"  {line}" for line in said.splitlines()[-8:])
            left = the_rig.leftovers()
            assert not left, f"rig.sh down left {left} behind"
        finally:
            os.close(fd)


@pytest.fixture
def cluster(rig: Rig, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Daemons on the rig's hosts for one test; all stopped afterwards, pass or fail."""
    c = Cluster(rig, request.node.originalname)
    try:
        yield c
    finally:
        c.stop_all()
