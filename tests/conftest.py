"""Shared fixtures and guards for the spoolatp test suite.

- ``spool``: a fresh :class:`spoolatp.Spool` in ``tmp_path``.
- ``tracker_spool``: the same, selected for this process's tracker API.
- ``both_fs_modes``: runs a module twice (``pytestmark = pytest.mark.usefixtures("both_fs_modes")``): once
  with a local file system's fast paths, once with the careful paths taken on network file systems.
- an autouse guard failing any test that leaves child processes or threads behind.

Warnings are errors and every test has a timeout: both come from ``pyproject.toml``.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolatp import Spool, fsio, tracker


@pytest.fixture(autouse=True)
def no_leaked_children_or_threads() -> Iterator[None]:
    """Fail the test if it leaves child processes or threads running."""
    threads_before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        children = multiprocessing.active_children()  # also reaps finished children
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not children and not threads:
            return
        time.sleep(0.05)
    for child in children:
        child.kill()
        child.join(5)
    pytest.fail(f"test leaked child processes {children} or threads {threads}")


@pytest.fixture(scope="module", params=["local", "network"])
def both_fs_modes(request: pytest.FixtureRequest) -> Iterator[str]:
    """Spools opened meanwhile take the local (``$SPOOLATP_NETWORK_FS=0``) or the network paths (``=1``)."""
    old = os.environ.get(fsio.NETWORK_FS_ENV)
    os.environ[fsio.NETWORK_FS_ENV] = "1" if request.param == "network" else "0"
    yield request.param
    if old is None:
        del os.environ[fsio.NETWORK_FS_ENV]
    else:
        os.environ[fsio.NETWORK_FS_ENV] = old


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spool(spool_path: Path) -> Spool:
    """A fresh spool in ``tmp_path``."""
    return Spool(spool_path)


@pytest.fixture
def tracker_spool(spool_path: Path) -> Iterator[Spool]:
    """A fresh spool selected for this process's tracker API; the selection is undone after."""
    old = tracker._selected
    spool = tracker.use_spool(spool_path)
    yield spool
    tracker._selected = old
    tracker._spools.pop(str(spool.path), None)


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemon subprocesses a test starts; any still running at its end are killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
