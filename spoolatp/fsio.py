"""File operations that stay correct on network file systems, and never follow links.

NFS, GlusterFS and sshfs answer some renames, lookups and reads falsely for about a
second (ENOENT after a success, ESTALE, a stale cache); the helpers here resolve each
case by asking where the file really is. They know files, not tasks.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from spoolatp.errors import SpoolError, StorageError

#: a path as the helpers take it: a string (the spool's hot paths build them with f-strings) or a Path
PathArg = str | Path


def move(src: PathArg, dst: PathArg, *, proof: str | None) -> bool:
    """``rename(src, dst)``; True if this call moved it, False if ``src`` was gone.

    Network file systems report false errors here, resolved by looking where
    the file actually is: NFS answers a retransmitted RENAME whose first try
    succeeded with ENOENT, GlusterFS answers ESTALE for a rename over a file
    another host created a moment ago (a retry succeeds). ``proof`` names the
    side only this caller can have touched: ``"src"`` for a private source
    (gone means we moved it), ``"dst"`` for a private destination (present
    means we moved it there); None where ENOENT is the truth (a local file
    system, see :func:`network_fs`): the source was gone.
    """
    for attempt in range(SETTLE_TRIES):
        try:
            os.rename(src, dst)
            return True
        except OSError as exc:
            if exc.errno == errno.ESTALE and attempt < SETTLE_TRIES - 1:
                time.sleep(settle_delay(attempt))
                continue
            if exc.errno != errno.ENOENT:
                raise
            if proof is None:
                return False
            parent, name = os.path.split(dst)
            if proof == "src":
                return not os.path.lexists(src) and os.path.isdir(parent)
            # a lookup may be answered from a stale cache; a readdir is answered by the server
            return os.path.lexists(dst) or listed(parent, name)
    return False  # pragma: no cover - the loop returns or raises


def settling(exc: OSError, directory: PathArg, attempt: int) -> bool:
    """Whether to try again an operation inside a task directory that a rename just brought here.

    GlusterFS answers ENOENT or ESTALE for a file in a directory another host
    (or this one) renamed a moment ago, and ESTALE for the directory itself
    (opendir, open) for up to several seconds; while the directory itself is
    there, a retry resolves it. Once the directory is gone, the task moved on.
    It never raises; callers loop until it says False (``attempt`` counts from 0).
    """
    # bounded (about 2 s): the daemon's main loop waits here too, and its heartbeat must not go stale; a task
    # whose directory stays stale longer is given back by the daemon (spoolatp.workers.give_back)
    if exc.errno not in (errno.ENOENT, errno.ESTALE) or attempt >= SETTLE_TRIES:
        return False
    directory = os.path.normpath(os.fspath(directory))
    parent, base = os.path.split(directory)
    # GlusterFS: a lookup may miss a directory a rename just brought here; its parent's readdir does not
    if not os.path.isdir(directory) and not listed(parent, base):
        return False
    if attempt >= SETTLE_TRIES - 1:
        # the last try: only while the server still lists the name (a readdir is answered by the server,
        # where a lookup may be answered from a stale cache); when it was the directory itself that could
        # not be opened, its parent is listed (listing the directory would fail the same way)
        failed = os.path.normpath(os.fsdecode(exc.filename)) if exc.filename else ""
        name = os.path.basename(failed)
        if not name or not listed(parent if failed == directory else directory, name):
            return False
    time.sleep(settle_delay(attempt))
    return True


def listed(directory: PathArg, name: str) -> bool:
    """Whether the server lists ``name`` in ``directory`` (a readdir, never a possibly cached lookup)."""
    return name in names_in(directory)


#: tries of an operation that a network file system may answer falsely for about a second (GlusterFS)
SETTLE_TRIES = 10


def settle_delay(attempt: int) -> float:
    return min(0.5, 0.005 * 2.0**attempt)  # 2.1 s over SETTLE_TRIES: past GlusterFS's 1 s of staleness


#: file systems whose lookups, reads and sizes a process on this host can take at their word: the kernel
#: answers them, no cache of another host's state sits in between (an NFS *server* exporting one of them
#: sees its clients' changes here directly)
LOCAL_FS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "zfs", "jfs", "bcachefs", "overlay"}
)

#: set to 1 to treat a spool as on a network file system even where it is not (0: as local)
NETWORK_FS_ENV = "SPOOLATP_NETWORK_FS"


def filesystem_of(path: PathArg) -> tuple[str, list[str]]:
    """The type and mount options of the file system ``path`` lives on; ("", []) if unknown.

    Found in /proc/self/mountinfo by the device number of ``path`` (bind
    mounts and mounts over mounts resolve), else by the longest mount point
    that contains it (a btrfs subvolume's device number is in no mount line).
    """
    try:
        dev = os.stat(path).st_dev
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return "", []
    want, best, found = f"{os.major(dev)}:{os.minor(dev)}", "", ("", list[str]())
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 6 or " - " not in line:
            continue
        kind, _, rest = line.split(" - ", 1)[1].partition(" ")
        mount = _unescape(fields[4])
        entry = (kind, [*fields[5].split(","), *rest.partition(" ")[2].split(",")])
        if fields[2] == want:
            return entry
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, found = mount, entry  # the last of equal mount points is the one on top
    return found


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def network_fs(path: PathArg) -> bool:
    """Whether ``path`` may answer falsely (NFS, GlusterFS, sshfs, any FUSE or unknown file system).

    Anything not known to be local counts as network, so the careful paths are
    taken. ``$SPOOLATP_NETWORK_FS`` (1 or 0) overrides what is found.
    """
    forced = os.environ.get(NETWORK_FS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return filesystem_of(path)[0] not in LOCAL_FS


def fsync_dir(directory: PathArg) -> None:
    """Make the entries of ``directory`` (a rename into it) durable; best effort where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some network file systems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def names_in(directory: PathArg) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def names_or_none(directory: PathArg) -> list[str] | None:
    """The names in ``directory``, or None if it cannot be listed (gone, or a stale handle)."""
    try:
        return os.listdir(directory)
    except OSError:
        return None


def read_settled(file: PathArg, *, local: bool = False) -> bytes:
    """The whole of ``file`` (never through a link), retried while a network file system settles.

    ``local``: see :func:`read_file`.
    """
    for attempt in itertools.count():  # settling() bounds it; it may say "again" on its last try
        try:
            return read_file(file, local=local)
        except OSError as exc:
            if not settling(exc, os.path.dirname(file), attempt):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def read_file(
    file: PathArg, *, follow: bool = False, local: bool = False, skip: Callable[[bytes], int] | None = None
) -> bytes:
    """The whole of ``file`` (``O_NOFOLLOW`` unless ``follow``): unbuffered, a few system calls for a small file.

    ``local``: the file is on a local file system (:func:`network_fs` says no), where a read of a regular
    file that returns less than it asked for has reached the end (Linux does not interrupt it), so no
    second read confirms that. ``skip``: given the first bytes read, how many at the start to leave out;
    those past the first read are never read (a task file's journal after a large input).

    A FIFO or device planted in place of the file never blocks (``O_NONBLOCK``, which a regular file
    ignores): it reads as empty (no writer) or as what a writer put in it, which fails the checks of a
    damaged file, or raises :class:`BlockingIOError` naming the file (a writer holds it open, silent).
    """
    fd = os.open(file, _READ if follow else _READ | os.O_NOFOLLOW)
    try:
        return read_open(fd, file, local=local, skip=skip)
    finally:
        os.close(fd)


def read_open(fd: int, file: PathArg, *, local: bool = False, skip: Callable[[bytes], int] | None = None) -> bytes:
    """:func:`read_file` of a descriptor opened already (at offset 0; ``O_NONBLOCK`` for a FIFO not to block).

    ``file``: its name, for the error a FIFO raises. The descriptor stays open.
    """
    try:
        raw = data = os.read(fd, READ_CHUNK)
        if skip is not None:
            while not local and 0 < len(raw) < READ_CHUNK:  # a short read need not be the end here
                more = os.read(fd, READ_CHUNK - len(raw))
                if not more:
                    break
                raw += more
            start = skip(raw)
            if start <= len(raw):
                data = raw[start:]
            elif len(raw) < READ_CHUNK or start >= os.fstat(fd).st_size:  # the file ends before ``start``
                return b""
            else:  # read on from there
                os.lseek(fd, start, os.SEEK_SET)
                raw = data = os.read(fd, READ_CHUNK)
        if not raw or (local and len(raw) < READ_CHUNK):
            return data
        chunks = [data]
        while True:  # to the end: a short read need not be the end of the file (FUSE, signals)
            data = os.read(fd, READ_CHUNK)
            if not data:
                return b"".join(chunks) if len(chunks) > 1 else chunks[0]
            chunks.append(data)
    except BlockingIOError:  # only a FIFO or device says EAGAIN here: a regular file ignores O_NONBLOCK
        raise BlockingIOError(errno.EAGAIN, "not a regular file (a FIFO?), nothing to read", os.fspath(file)) from None


#: bytes asked for per read by :func:`read_file`
READ_CHUNK = 1 << 16

#: how :func:`read_file` opens: O_NONBLOCK, so that neither the open nor a read of a FIFO planted in the spool
#: waits for a writer (Linux ignores it for regular files, local or NFS: no system call more)
_READ = os.O_RDONLY | os.O_NONBLOCK


def nofollow(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open`: never through a link, and never blocking on a FIFO (see :func:`read_file`)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


def open_in(directory: PathArg, name: str, flags: int) -> int:
    """Open ``directory/name``, following a symbolic link in neither of the two (mode 0660 if created).

    ``O_NONBLOCK`` is added: a FIFO planted as ``name`` opened for writing fails with ENXIO (no reader)
    where it would wait for one, and for reading, see :func:`read_file`; a regular file ignores it.
    """
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o660, dir_fd=dfd)
    finally:
        os.close(dfd)


def not_regular(path: PathArg) -> str | None:
    """What ``path`` is if it is there but no regular file (``"a FIFO"``, ...), else None: one lstat.

    For the error paths, to say why a file read empty or could not be opened; the hot paths never ask (a
    FIFO's empty read fails their checks anyway).
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else kind(mode)


def kind(mode: int) -> str:
    """A file type in words, for messages: ``"a FIFO"``, ``"a symbolic link"``, ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or special file"


def real_dir(path: PathArg) -> bool:
    """Whether ``path`` is a directory itself, not a symbolic link to one (lstat, never stat)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def planted(path: PathArg) -> bool:
    """Whether ``path`` is there but is no directory itself: a file or symbolic link planted in its place.

    False when it is a directory, and when it cannot be looked up: GlusterFS may answer the lookup of a
    directory another host renamed a moment ago with ENOENT or ESTALE (a rename then still moves it).
    """
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def check_real_dir(path: PathArg) -> None:
    if not real_dir(path):
        raise StorageError(
            errno.ENOTDIR,
            f"{path} is not a directory but a symbolic link or a file; refusing to work through it "
            "(was it planted? inspect it and remove it)",
        )


#: errors by which a file system refuses a write: full, over quota, read-only, failing
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def reraise(exc: OSError, what: str) -> NoReturn:
    """Raise ``exc`` again, as a :class:`StorageError` that says ``what`` failed if the file system refused a write."""
    if isinstance(exc, StorageError):
        raise StorageError(exc.errno, f"{what}: {exc}") from exc
    if isinstance(exc, SpoolError) or exc.errno not in STORAGE_ERRNOS:
        raise exc
    raise StorageError(exc.errno, f"{what}: {exc.strerror or exc}") from exc


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def listdir(path: PathArg) -> list[str]:
    try:
        return [e for e in os.listdir(path) if not e.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def mtime(path: PathArg, default: Any, *, follow: bool = True) -> Any:
    try:
        return os.stat(path, follow_symlinks=follow).st_mtime
    except OSError:
        return default


def mtime_ns(path: PathArg) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def ctime(path: PathArg, default: Any) -> Any:
    try:
        return os.lstat(path).st_ctime
    except OSError:
        return default


def remove(path: PathArg) -> None:
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise
