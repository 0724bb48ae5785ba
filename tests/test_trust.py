"""Trust and bad input (issue #6): signed task files, paths, permissions, limits, faults, fuzzing.

The claims under test:

- In a signed spool no task file is unpickled unless its HMAC matches: forged,
  unsigned, truncated, garbage and copied files in every state directory are
  quarantined with their reason, never executed (an evil payload would leave a
  marker directory), and the daemon goes on serving good tasks.
- A host without the key, or with another one, is refused with a clear error
  before it reads anything, and quarantines nothing.
- Nothing outside the spool is created, read, renamed or deleted because of a
  name or link found inside it.
- Sizes are limited before anything is written; a full or read-only file
  system gives a clear error and leaves no half-visible task.
- A FIFO planted where a file belongs (task file, journal, cancel marker,
  response, type file, heartbeat) blocks no reader, writer, command or
  daemon: it is taken as a damaged file, and its task quarantined.
- Fuzzed task files and drop-in documents raise only the documented errors.

Everything runs on real files; the full and read-only file systems are real
tmpfs mounts (root only, else skipped with the reason).
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import pickle
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolatp import Claim, CorruptTaskFile, QueueEmpty, Spool, State, TaskNotFound, UnknownTaskType, dropin
from spoolatp.daemon import trust_warnings
from spoolatp.errors import SigningKeyError, StorageError, TaskTooLarge
from spoolatp.format import KEY_ENV, RESPONSE_MAGIC, TASK_MAGIC, key_id, load_key, make_key, seal, unseal
from spoolatp.workers import run_claim

SERVER = "trust-test"
ATTACKER_KEY = b"the attacker's own key, not the spool's"


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def write_key(path: Path, mode: int = 0o600, content: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if content is not None else secrets.token_hex(32).encode() + b"\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key(tmp_path / "keys" / "spool.key")


@pytest.fixture
def signed(tmp_path: Path, key_file: Path) -> Spool:
    """A signed spool with type T (handler sequence_sum)."""
    spool = Spool(tmp_path / "spool", key_file=key_file)
    spool.register_type("T", "sequence_sum", timeout=3600)
    return spool


@pytest.fixture
def unsigned(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.register_type("T", "sequence_sum", timeout=3600)
    return spool


class Boom:
    """Unpickling this runs ``os.mkdir(path)``: the marker that proves a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def evil_payload(marker: Path, task_id: str) -> bytes:
    record = {"type": "T", "id": task_id, "input": Boom(marker), "enqueued": 0.0, "message": "", "slot": None}
    return pickle.dumps(record)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int, int, bytes | str]]:
    """Every entry under ``root`` (but ``skip``): mode, size, mtime and content (or link text)."""
    out: dict[str, tuple[int, int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                content: bytes | str = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                content = path.read_bytes()
            else:
                content = b""
            out[os.path.relpath(path, root)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, content)
    return out


def quarantined(spool: Spool) -> dict[str, str]:
    """``{entry: reason}`` of everything in quarantine/."""
    q = spool.path / "quarantine"
    return {n: (q / f"{n}.reason").read_text() for n in os.listdir(q) if not n.endswith(".reason")}


# --------------------------------------------------------------------------- planting bad task files

KINDS = {
    # kind: (what is in the task file, the reason it is quarantined with)
    "unsigned": "not signed",
    "forged": "signature mismatch",
    "other key": "signed with another key",
    "truncated": "truncated",
    "garbage": "header does not start",
    "copied": "signature mismatch",
}
PLACES = ["enqueued", "delayed", "scheduled", "running", "finished", "failed"]


def bad_task_file(kind: str, spool: Spool, key: str, marker: Path, task_id: str) -> bytes:
    evil = evil_payload(marker, task_id)
    real = load_key(spool.key_file) if spool.key_file else None
    if kind == "unsigned":
        return seal(TASK_MAGIC, evil)  # a correct checksum, but no signature
    if kind == "forged":  # the attacker knows the key id (it is public) but not the key
        data = seal(TASK_MAGIC, evil, key=ATTACKER_KEY, bind=key)
        return data.replace(key_id(ATTACKER_KEY).encode(), str(spool.key_id).encode(), 1)
    if kind == "other key":
        return seal(TASK_MAGIC, evil, key=ATTACKER_KEY, bind=key)
    if kind == "truncated":  # even a file signed with the right key is checked whole before it is read
        return seal(TASK_MAGIC, evil, key=real, bind=key)[:-5]
    if kind == "garbage":
        return os.urandom(200) + b"\n" + evil
    if kind == "copied":  # signed by the spool's key, for another task
        return seal(TASK_MAGIC, evil, key=real, bind=make_key("T", "other", 1))
    raise AssertionError(kind)


def plant(spool: Spool, place: str, kind: str, task_id: str, marker: Path, server: str = "dead-1") -> str:
    """Put a task directory with a bad task file into ``place``, with its ids/ link; return its key."""
    key = make_key("T", task_id, time.time_ns())
    if place in ("scheduled", "running"):
        (spool.path / place / server).mkdir(exist_ok=True)
        path = spool.path / place / server / key
    elif place == "delayed":
        path = spool.path / "delayed" / f"{int((time.time() - 60) * 1e9):016x}~{key}"  # due a minute ago
    else:
        path = spool.path / place / key
    path.mkdir()
    (path / "task").write_bytes(bad_task_file(kind, spool, key, marker, task_id))
    os.symlink(key, spool.path / "ids" / f"T~{task_id}")
    return key


def test_the_detector_works_a_task_file_signed_with_the_key_is_unpickled(signed: Spool, tmp_path: Path) -> None:
    """Without this, "no marker" would prove nothing: a correctly signed evil task does run its payload."""
    marker = tmp_path / "marker"
    key = make_key("T", "evil", time.time_ns())
    (signed.path / "enqueued" / key).mkdir()
    real = load_key(signed.key_file)  # type: ignore[arg-type]
    (signed.path / "enqueued" / key / "task").write_bytes(
        seal(TASK_MAGIC, evil_payload(marker, "evil"), key=real, bind=key)
    )
    signed.claim(SERVER)
    assert marker.is_dir()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("place", PLACES)
def test_a_bad_task_file_in_any_state_directory_is_quarantined_never_unpickled(
    signed: Spool, tmp_path: Path, place: str, kind: str
) -> None:
    marker = tmp_path / "marker"
    signed.enqueue("T", "good-before", [1])
    key = plant(signed, place, kind, "evil", marker)
    signed.enqueue("T", "good-after", [2])

    if place in ("scheduled", "running"):
        signed.recover("dead-1", "its daemon died")  # back to the queue, journal and all: nothing is read yet
    if place in ("finished", "failed"):
        with pytest.raises(CorruptTaskFile, match=KINDS[kind]):
            signed.log("T", "evil")  # the only reader of an ended task's record
        got = [c.task_id for c in signed.claim(SERVER, limit=10)]
    else:
        got = [c.task_id for c in signed.claim(SERVER, limit=10)]

    assert got == ["good-before", "good-after"]
    assert not marker.exists(), "a bad task file was unpickled"
    ((entry, reason),) = quarantined(signed).items()
    expected = KINDS[kind]
    if kind == "truncated" and place in ("scheduled", "running"):
        # format 2: recover() appended its journal line to the task file, and the header's length now reaches
        # into that line: the record no longer looks short, it fails its signature
        expected = "signature mismatch"
    assert entry.startswith(key) and expected in reason, (entry, reason)
    with pytest.raises(TaskNotFound):  # gone from every state, and its id is free again
        signed.status("T", "evil")
    signed.enqueue("T", "evil", [3])


def test_a_response_that_is_altered_or_copied_is_quarantined(signed: Spool) -> None:
    claims = {}
    for task_id in ("a", "b"):
        signed.enqueue("T", task_id, [1])
        (claim,) = signed.claim(SERVER)
        signed.start(claim)
        signed.store_response(claim, f"answer {task_id}", "text/plain")
        signed.finish(claim)
        claims[task_id] = claim
    assert signed.response("T", "a") == ("answer a", "text/plain")
    a = signed.path / "finished" / claims["a"].key / "response"
    b = signed.path / "finished" / claims["b"].key / "response"
    b.write_bytes(a.read_bytes())  # a valid signature, but for task a
    with pytest.raises(CorruptTaskFile, match="signature mismatch"):
        signed.response("T", "b")
    a.write_bytes(a.read_bytes().replace(b"text/plain", b"text/html!"))  # the metadata is signed too
    with pytest.raises(CorruptTaskFile, match="signature mismatch"):
        signed.response("T", "a")
    assert len(quarantined(signed)) == 2 and not a.exists() and not b.exists()
    assert signed.status("T", "a") is State.FINISHED  # the task itself stays


def test_a_forged_task_type_is_quarantined_and_never_runs(signed: Spool) -> None:
    """A type names the handler and its options (a command line, say): forging one is as bad as a pickle."""
    path = signed.path / "types" / "T.json"
    data = json.loads(path.read_text())
    data["handler"] = "command.run"
    data["options"] = {"argv": ["sh", "-c", "touch /tmp/pwned"]}
    path.write_text(json.dumps(data))
    signed._types.clear()
    with pytest.raises(UnknownTaskType):
        signed.get_type("T")
    ((entry, reason),) = quarantined(signed).items()
    assert entry.startswith("T.json") and "signature mismatch" in reason
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "hmac"}))  # and one without a signature
    with pytest.raises(UnknownTaskType):
        signed.get_type("T")
    assert any("unsigned" in r for r in quarantined(signed).values())


def test_a_signed_spool_round_trips_tasks_responses_and_types(signed: Spool) -> None:
    signed.enqueue("T", "Task001", (1, 2, 3), message="hello")
    head = next((signed.path / "enqueued").iterdir()) / "task"
    assert head.read_bytes().startswith(b"SPOOLATP-TASK 2 ")
    (claim,) = signed.claim(SERVER)
    assert tuple(signed.start(claim)) == ("T", "Task001", "sequence_sum", (1, 2, 3))
    signed.store_response(claim, b"\x00bytes", "application/octet-stream")
    signed.finish(claim)
    assert signed.response("T", "Task001") == (b"\x00bytes", "application/octet-stream")
    assert signed.log("T", "Task001")[0].message == "hello"
    assert json.loads((signed.path / "types" / "T.json").read_text())["hmac"].startswith("hmac-sha256:")
    assert quarantined(signed) == {}


# --------------------------------------------------------------------------- keys


def test_a_host_without_the_key_is_refused_before_it_reads_anything(signed: Spool, tmp_path: Path) -> None:
    signed.enqueue("T", "Task001", [1])
    before = snapshot(signed.path)
    keyless = Spool(signed.path)  # SPOOLATP_KEY_FILE is not set
    for call in (
        lambda: keyless.enqueue("T", "Task002", [2]),
        lambda: keyless.claim(SERVER),
        lambda: keyless.log("T", "Task001"),
        lambda: keyless.register_type("U", "sequence_sum"),
    ):
        with pytest.raises(SigningKeyError, match=f"signed .* no key: set {KEY_ENV}"):
            call()
    assert snapshot(signed.path) == before  # nothing moved, nothing quarantined
    assert keyless.status("T", "Task001") is State.ENQUEUED  # looking is allowed: no task file is read


def test_a_host_with_another_key_gets_a_clear_error_and_quarantines_nothing(signed: Spool, tmp_path: Path) -> None:
    signed.enqueue("T", "Task001", [1])
    before = snapshot(signed.path)
    other = Spool(signed.path, key_file=write_key(tmp_path / "other.key"))
    expected = f"this host's key \\(id {other.key_id}, .*\\) does not match the spool's \\(id {signed.key_id}\\)"
    for call in (lambda: other.claim(SERVER), lambda: other.log("T", "Task001"), lambda: other.enqueue("T", "x", 1)):
        with pytest.raises(SigningKeyError, match=expected):
            call()
    assert snapshot(signed.path) == before


def test_a_host_with_a_key_refuses_a_spool_whose_settings_say_unsigned(signed: Spool) -> None:
    """spool.json lives in the spool: whoever can write it must not be able to switch signing off."""
    settings = json.loads((signed.path / "spool.json").read_text())
    settings["signed"] = False
    (signed.path / "spool.json").write_text(json.dumps(settings))
    signed._settings = None
    with pytest.raises(SigningKeyError, match="is not signed"):
        signed.claim(SERVER)


@pytest.mark.parametrize(
    ("mode", "content", "message"),
    [
        (0o644, None, "accessible to others"),
        (0o602, None, "accessible to others"),
        (0o600, b"short\n", "a key is 16 to 4096 bytes"),
        (0o600, b"x" * 5000, "a key is 16 to 4096 bytes"),
    ],
)
def test_an_unusable_key_file_is_refused(tmp_path: Path, mode: int, content: bytes | None, message: str) -> None:
    key = write_key(tmp_path / f"key-{mode:o}-{len(content or b'')}", mode, content)
    with pytest.raises(SigningKeyError, match=message):
        Spool(tmp_path / "spool", key_file=key)


def test_a_missing_key_file_and_one_inside_the_spool_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read key file"):
        Spool(tmp_path / "spool", key_file=tmp_path / "nope")
    Spool(tmp_path / "spool")
    inside = write_key(tmp_path / "spool" / "files" / "spool.key")
    with pytest.raises(SigningKeyError, match="lies inside the spool"):
        Spool(tmp_path / "spool", key_file=inside)


def test_signing_is_turned_on_only_in_a_spool_without_tasks(unsigned: Spool, key_file: Path) -> None:
    unsigned.enqueue("T", "old", [1])
    keyed = Spool(unsigned.path, key_file=key_file)
    with pytest.raises(SigningKeyError, match="holds 1 task"):
        keyed.enable_signing()
    unsigned.delete("T", "old")
    assert keyed.enable_signing() == ["T"]
    assert keyed.settings()["signed"] is True and keyed.settings()["key_id"] == keyed.key_id
    assert keyed.enable_signing() == []  # again: nothing to do
    keyed.enqueue("T", "new", [1])
    (claim,) = keyed.claim(SERVER)
    assert keyed.start(claim).input == [1]


def test_the_key_never_appears_in_the_spool(signed: Spool, key_file: Path) -> None:
    signed.enqueue("T", "Task001", [1])
    key = load_key(key_file)
    for path, (_, _, _, content) in snapshot(signed.path).items():
        text = content.encode() if isinstance(content, str) else content
        assert key not in text and str(key_file).encode() not in text, path


def test_init_new_key_signs_a_new_spool_and_every_cli_command_uses_the_env_key(tmp_path: Path) -> None:
    spool, key = tmp_path / "spool", tmp_path / "etc" / "spool.key"
    key.parent.mkdir()
    doc = json.loads(cli(spool, "init", "--new-key", str(key), "--json").stdout)
    assert doc["settings"]["signed"] is True and doc["signing"]["key_id"] == key_id(load_key(key))
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    env = {KEY_ENV: str(key)}
    assert cli(spool, "register", "T", "sequence_sum", env=env).returncode == 0
    assert cli(spool, "enqueue", "T", "Task001", "[1, 2]", env=env).returncode == 0
    refused = cli(spool, "enqueue", "T", "Task002", "[1]")
    assert refused.returncode == 1 and f"set {KEY_ENV}" in refused.stderr
    again = cli(spool, "init", "--new-key", str(key))
    assert again.returncode == 1 and "never replaced" in again.stderr


# --------------------------------------------------------------------------- the daemon


def cli(
    spool: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "SPOOLATP_SPOOL", "SPOOLATP_DEBUG")}
    return subprocess.run(
        [sys.executable, "-m", "spoolatp", "--spool", str(spool), *args],
        capture_output=True,
        text=True,
        env={**base, "PYTHONWARNINGS": "error", **(env or {})},
        timeout=timeout,
    )


@pytest.mark.timeout(180)
def test_the_daemon_quarantines_every_bad_task_file_and_serves_the_good_ones(
    signed: Spool, key_file: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    planted = {}
    for n, place in enumerate(["enqueued", "delayed", "scheduled", "running", "finished", "failed"]):
        for kind in KINDS:
            task_id = f"evil-{place}-{kind.replace(' ', '-')}"
            planted[task_id] = plant(signed, place, kind, task_id, marker, server="trust-d")
        signed.enqueue("T", f"good-{n}", [n, 1])
    env = {KEY_ENV: str(key_file)}

    out = cli(signed.path, "daemon", "--burst", "--workers", "1", "--server-id", "trust-d", env=env)
    assert out.returncode == 0, out.stderr
    ended = cli(signed.path, "log", "T", "evil-finished-forged", env=env)  # ended tasks are read by readers only
    assert ended.returncode == 1 and "signature mismatch" in ended.stderr

    assert not marker.exists(), "a bad task file was unpickled"
    assert [(t.task_id, t.state) for t in signed.tasks(State.FINISHED) if t.task_id.startswith("good")] == [
        (f"good-{n}", State.FINISHED) for n in range(6)
    ]
    reasons = quarantined(signed)
    for task_id, key in planted.items():
        if "finished" in task_id or "failed" in task_id:
            continue
        ((reason,),) = [[r for e, r in reasons.items() if e.startswith(key)]]
        assert KINDS[task_id.split("-", 2)[2].replace("-", " ")] in reason
    assert json.loads(cli(signed.path, "stats", "--json", env=env).stdout)["quarantine"] == 4 * len(KINDS) + 1
    assert "is not signed" not in out.stderr


@pytest.mark.timeout(120)
def test_an_unsigned_spools_daemon_warns_once_and_a_misfitting_key_stops_it(unsigned: Spool, tmp_path: Path) -> None:
    unsigned.enqueue("T", "Task001", [1, 2])
    out = cli(unsigned.path, "daemon", "--burst", "--workers", "1")
    assert out.returncode == 0 and out.stderr.count("is not signed: every task file in it is trusted") == 1
    assert unsigned.status("T", "Task001") is State.FINISHED
    key = write_key(tmp_path / "k")
    refused = cli(unsigned.path, "daemon", "--burst", "--workers", "1", env={KEY_ENV: str(key)})
    assert refused.returncode == 1 and "is not signed" in refused.stderr and "init --key-file" in refused.stderr


def test_a_key_given_to_the_daemon_reaches_its_workers_and_their_responses(
    signed: Spool, key_file: Path, tmp_path: Path
) -> None:
    """Daemon(Spool(key_file=...)) with no environment: the workers sign the handler's response too."""
    from spoolatp.daemon import Daemon

    signed.register_type("Echo", "testing.echo")
    signed.enqueue("Echo", "Task001", {"x": 1})
    Daemon(signed, workers=1, burst=True, server_id="trust-in").run()
    assert signed.status("Echo", "Task001") is State.FINISHED, signed.log("Echo", "Task001")
    assert signed.response("Echo", "Task001") == ('{"x": 1}', "application/json")


# --------------------------------------------------------------------------- identifiers

BAD_IDS = {
    "../../etc/x": "contains '/'",
    "a/b": "contains '/'",
    "..": "contains '..'",
    "\x00": "contains '\\\\x00'",
    "x" * 10_000: "too long",
    ".": "names the current directory",
    " padded": "white space",
    "tab\there": "control characters",
    "": "must not be empty",
}
GOOD_IDS = ["with space", "Tâche 3", "日本語", "tilde~and%percent", ".hidden", "Ωμέγα-ß"]


@pytest.mark.parametrize("bad", list(BAD_IDS), ids=lambda v: repr(v[:20]))
def test_a_bad_identifier_gets_a_clear_error_everywhere_and_touches_nothing(
    unsigned: Spool, tmp_path: Path, bad: str
) -> None:
    before = snapshot(tmp_path, skip=unsigned.path / "tmp")
    message = BAD_IDS[bad]
    for call in (
        lambda: unsigned.enqueue("T", bad, 1),
        lambda: unsigned.enqueue(bad, "x", 1),
        lambda: unsigned.status("T", bad),
        lambda: unsigned.delete("T", bad),
        lambda: unsigned.cancel("T", bad),
        lambda: unsigned.files_dir("T", bad),
        lambda: unsigned.register_type(bad, "sequence_sum"),
        lambda: unsigned.claim(bad),
        lambda: unsigned.recover(bad),
        lambda: unsigned.forget_daemon(bad),
        lambda: unsigned.beat(bad, {}),
        lambda: unsigned.start(Claim(str(unsigned.path), bad, make_key("T", "x", 1), 1)),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    if "\x00" not in bad:  # argv cannot carry NUL
        out = cli(unsigned.path, "enqueue", "T", bad, "1")
        assert (
            out.returncode == 1 and out.stderr.startswith("spoolatp: error: task id") and "Traceback" not in out.stderr
        )
    dropin.prepare(unsigned)
    name = f"doc-{secrets.token_hex(4)}.json"
    (dropin.drop_dir(unsigned) / name).write_text(json.dumps({"type": "T", "id": bad}))
    report = dropin.ingest(unsigned)
    assert [(n, r.split(":")[0]) for n, r in report.rejected] == [(name, "bad task id")]
    after = snapshot(tmp_path, skip=unsigned.path / "tmp")
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert {p for p in changed if not p.startswith("spool/drop")} <= {"spool", "spool/types"}, changed
    assert list(unsigned.tasks()) == []


def test_a_claim_naming_a_path_outside_the_spool_is_refused(unsigned: Spool, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    for claim in (
        Claim(str(unsigned.path), "x", "../../outside", 1),
        Claim(str(unsigned.path), "x", make_key("T", "x", 1) + "/..", 1),
    ):
        for call in (unsigned.start, unsigned.finish, unsigned.cancel_requested, unsigned.ended):
            with pytest.raises(ValueError):
                call(claim)  # type: ignore[operator]
    assert os.listdir(tmp_path / "outside") == []


@pytest.mark.parametrize("good", GOOD_IDS)
def test_a_valid_identifier_with_spaces_or_letters_of_any_script_works_everywhere(signed: Spool, good: str) -> None:
    signed.register_type(good, "sequence_sum")
    signed.enqueue(good, good, [1, 2])
    (claim,) = signed.claim(SERVER)
    assert (claim.type_id, claim.task_id) == (good, good)
    signed.start(claim)
    signed.store_response(claim, good, "text/plain")
    signed.finish(claim)
    assert signed.response(good, good) == (good, "text/plain")
    assert [r.state for r in signed.log(good, good)][-1] is State.FINISHED
    env = {KEY_ENV: str(signed.key_file)}
    assert cli(signed.path, "enqueue", good, good + "-cli", "[1]", env=env).returncode == 0
    assert json.loads(cli(signed.path, "status", good, good + "-cli", "--json", env=env).stdout)["id"] == good + "-cli"
    dropin.prepare(signed)
    (dropin.drop_dir(signed) / "d.json").write_text(json.dumps({"type": good, "id": good + "-drop"}))
    assert dropin.ingest(signed).enqueued == [(good, good + "-drop")]
    signed.delete(good, good)
    assert quarantined(signed) == {}


# --------------------------------------------------------------------------- links


@pytest.fixture
def outside(tmp_path: Path, signed: Spool) -> Path:
    """A directory outside the spool holding a task file validly signed for key ``bait``: the worst case."""
    marker = tmp_path / "marker"
    path = tmp_path / "outside"
    path.mkdir()
    key = make_key("T", "bait", time.time_ns())
    real = load_key(signed.key_file)  # type: ignore[arg-type]
    (path / "task").write_bytes(seal(TASK_MAGIC, evil_payload(marker, "bait"), key=real, bind=key))
    (path / "journal").write_text("")
    (path / "KEY").write_text(key)
    return path


def test_a_symlink_planted_in_the_queue_is_refused_and_its_target_untouched(
    signed: Spool, outside: Path, tmp_path: Path
) -> None:
    key = (outside / "KEY").read_text()
    os.symlink(outside, signed.path / "enqueued" / key)
    os.symlink(key, signed.path / "ids" / "T~bait")
    before = snapshot(outside)
    signed.enqueue("T", "good", [1])
    assert signed.counts()["ENQUEUED"] == 2
    assert [t.task_id for t in signed.tasks()] == ["good"]
    for call in (
        lambda: signed.status("T", "bait"),
        lambda: signed.log("T", "bait"),
        lambda: signed.cancel("T", "bait"),
        lambda: signed.delete("T", "bait"),
    ):
        with pytest.raises(TaskNotFound):
            call()
    assert [c.task_id for c in signed.claim(SERVER, limit=5)] == ["good"]
    assert snapshot(outside) == before and not (tmp_path / "marker").exists()
    ((entry, reason),) = quarantined(signed).items()
    assert entry.startswith(key) and "symlink" in reason
    assert os.path.islink(signed.path / "quarantine" / entry)  # moved as a link, never followed


@pytest.mark.parametrize("place", ["running", "scheduled", "finished", "failed", "delayed", "tmp"])
def test_a_symlink_planted_in_any_state_or_server_directory_is_never_followed(
    signed: Spool, outside: Path, tmp_path: Path, place: str
) -> None:
    signed.register_type("T", "sequence_sum", timeout=0.001, timeret=0.001)  # due for every sweep
    key = (outside / "KEY").read_text()
    shutil.copytree(outside, tmp_path / "baitsrv" / key)  # a server directory elsewhere, holding a task
    if place in ("running", "scheduled"):
        os.symlink(tmp_path / "baitsrv", signed.path / place / "planted-server")  # a whole server directory
        (signed.path / place / "real-server").mkdir()
        os.symlink(outside, signed.path / place / "real-server" / key)  # and one task in a real one
    elif place == "delayed":
        os.symlink(outside, signed.path / "delayed" / f"{int((time.time() - 60) * 1e9):016x}~{key}")
    elif place == "tmp":
        os.symlink(outside, signed.path / "tmp" / f"reap~0000~{key}")
    else:
        os.symlink(outside, signed.path / place / key)
    os.symlink(key, signed.path / "ids" / "T~bait")
    before = snapshot(tmp_path, skip=signed.path)
    time.sleep(0.01)

    list(signed.tasks())
    signed.counts()
    with pytest.raises(TaskNotFound):
        signed.delete("T", "bait")
    signed.reenqueue_zombies()
    signed.recover("planted-server")
    signed.recover("real-server")
    signed.delete_retired()
    signed.sweep_tmp(grace=0)
    with contextlib.suppress(QueueEmpty):
        signed.claim(SERVER, limit=5)

    assert snapshot(tmp_path, skip=signed.path) == before and not (tmp_path / "marker").exists()
    assert sorted(os.listdir(tmp_path)) == ["baitsrv", "keys", "outside", "spool"]
    assert quarantined(signed) or place == "tmp"  # each link was moved aside, as a link


def test_a_planted_ids_link_never_becomes_a_path(signed: Spool, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "task").write_text("keep me")
    os.symlink("../../victim", signed.path / "ids" / "T~x")
    before = snapshot(victim)
    for call in (lambda: signed.delete("T", "x"), lambda: signed.status("T", "x")):
        with pytest.raises(TaskNotFound):
            call()
    assert snapshot(victim) == before
    assert any("is not the key of task" in r for r in quarantined(signed).values())


def test_a_symlink_in_place_of_a_hot_folder_or_its_inbox_is_rejected_not_followed(
    unsigned: Spool, tmp_path: Path
) -> None:
    unsigned.register_type("Hot", "testing.marker", options={"hot_folder": True})
    dropin.prepare(unsigned)
    victims = tmp_path / "victims"
    victims.mkdir()
    (victims / "passwd").write_text("root:x:0:0")
    claim_like = "0000000000000000~00000000~1~0123456789abcdef~passwd2"  # what an ingester would adopt
    (victims / claim_like).write_text("also mine")
    before = snapshot(victims)
    hot = dropin.hot_folder(unsigned, "Hot")
    assert not (hot / ".ingest").exists()  # made when the first file is claimed
    os.symlink(victims, hot / ".ingest")
    report = dropin.ingest(unsigned)
    assert [n for n, _ in report.rejected] == ["Hot/.ingest"] and "never followed" in report.rejected[0][1]
    os.rename(hot, tmp_path / "old-hot")
    os.symlink(victims, hot)
    report = dropin.ingest(unsigned)
    assert report.rejected and "symbolic link" in report.rejected[0][1]
    assert snapshot(victims) == before and list(unsigned.tasks()) == []
    dropin.ingest(unsigned)
    assert stat.S_ISDIR(os.lstat(hot).st_mode)  # made again, as a real folder


def test_a_link_planted_in_files_keeps_a_hot_folder_file_inside_the_spool(unsigned: Spool, tmp_path: Path) -> None:
    unsigned.register_type("Hot", "testing.marker", options={"hot_folder": True})
    dropin.prepare(unsigned)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, unsigned.path / "files" / "Hot~pic.jpg")
    (dropin.hot_folder(unsigned, "Hot") / "pic.jpg").write_bytes(b"\xff\xd8")
    report = dropin.ingest(unsigned)
    assert report.enqueued == [] and os.listdir(elsewhere) == []
    assert list(unsigned.tasks()) == [] and len(dropin.pending(unsigned)) == 1  # kept for a later ingest


def test_a_cancel_is_seen_by_a_process_whose_real_ids_cannot_reach_the_spool(tmp_path: Path) -> None:
    """A setuid-style process (effective root, real nobody): its cancel checks ask as open() would."""
    if os.geteuid() != 0:
        pytest.skip("needs root to change its real uid")
    root = tmp_path / "private"
    root.mkdir(mode=0o700)  # nobody cannot search it: an access() by the real uid finds nothing inside
    spool = Spool(root / "spool")
    spool.register_type("T", "h")
    spool.enqueue("T", "t", 1)
    claim, _ = spool.claim_and_start("srv")
    spool.cancel("T", "t", by="operator")

    def check() -> None:
        os.setresuid(65534, 0, 0)  # real uid nobody, effective uid root
        assert Spool(root / "spool").cancel_requested(claim) == "operator"

    without_blocking(check)


# --------------------------------------------------------------------------- FIFOs

#: how a planted FIFO is met: nobody holds it open (a read finds it empty), or a writer holds it open and
#: sends nothing (a read finds nothing yet); either way an open for writing finds no reader
WRITERS = ["no writer", "a silent writer"]


@pytest.fixture
def held() -> Iterator[list[int]]:
    """Descriptors a test holds open (a FIFO's silent writer); closed at its end."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def plant_fifo(path: Path, writer: str, held: list[int]) -> None:
    """Put a FIFO at ``path`` in place of what is there; with a silent writer, hold it open for writing in ``held``."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mkfifo(path)
    if writer == "a silent writer":
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # an open for writing needs a reader at that moment
        held.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        os.close(reader)


def without_blocking(check: Callable[[], None], timeout: float = 30) -> None:
    """Run ``check`` in a forked child; fail with its traceback, or as blocked if it still runs after ``timeout`` s.

    A thread stuck in the open or the read of a FIFO cannot be stopped; a child process can be killed, so a
    regression fails the test instead of hanging the suite.
    """
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            check()
        except BaseException:
            send.send(traceback.format_exc())
        else:
            send.send(None)

    proc = ctx.Process(target=child)
    proc.start()
    try:
        if not receive.poll(timeout):
            pytest.fail(f"still running after {timeout:g} s: blocked (on a FIFO)", pytrace=False)
        trouble = receive.recv()
    finally:
        proc.kill()
        proc.join()
        receive.close()
        send.close()
    if trouble:
        pytest.fail(trouble, pytrace=False)


def task_dir(spool: Spool, claim: Claim, place: str) -> Path:
    if place in ("scheduled", "running"):
        return spool.path / place / SERVER / claim.key
    return spool.path / place / claim.key


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("place", ["running", "finished"])
def test_a_fifo_as_the_task_file_of_a_held_or_ended_task_blocks_no_spool_call(
    tmp_path: Path, place: str, writer: str, held: list[int]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("T", "sequence_sum")
    spool.register_type("Due", "sequence_sum", timeout=0.001, timeret=0.001)  # past its timeout or retention
    for type_id, task_id in (("T", "looked-at"), ("T", "deleted"), ("Due", "swept"), ("T", "fenced")):
        spool.enqueue(type_id, task_id, [1])
    claims = {c.task_id: c for c in spool.claim(SERVER, limit=4)}
    for claim in claims.values():
        spool.start(claim)
        if place == "finished":
            spool.store_response(claim, "done", "text/plain")
            spool.finish(claim)
    fenced = spool.path / "tmp" / f"reap~dead~{claims['fenced'].key}"  # a reaper died after its fencing rename
    os.rename(task_dir(spool, claims["fenced"], place), fenced)
    for claim in claims.values():
        plant_fifo((fenced if claim.task_id == "fenced" else task_dir(spool, claim, place)) / "task", writer, held)
    state = State[place.upper()]
    time.sleep(0.01)

    def check() -> None:
        assert spool.status("T", "looked-at") is state
        assert spool.info("T", "looked-at").state is state  # its journal reads as none
        assert {t.task_id for t in spool.tasks(state)} == {"looked-at", "deleted", "swept"}
        if state is State.FINISHED:
            assert spool.response("T", "looked-at") == ("done", "text/plain")
        with pytest.raises(CorruptTaskFile, match="FIFO"):
            spool.log("T", "looked-at")  # a reader of its record quarantines it
        spool.delete("T", "deleted")
        assert spool.reenqueue_zombies() == []  # "swept", held past its timeout, is taken back and set aside
        assert spool.delete_retired() == ([("Due", "swept")] if state is State.FINISHED else [])
        spool.sweep_tmp(grace=0)  # "fenced" too
        assert list(spool.tasks()) == []

    without_blocking(check)
    reasons = quarantined(spool)
    taken = {"looked-at", "fenced"} | ({"swept"} if place == "running" else set())  # taken back, then set aside
    assert {e.split("~")[2] for e in reasons} == taken
    assert all("task is a FIFO, not a regular file" in r or "(a FIFO?)" in r for r in reasons.values()), reasons
    assert os.listdir(spool.path / "tmp") == [] and os.listdir(spool.path / "ids") == []


@pytest.mark.parametrize("place", ["running", "finished"])
def test_a_fifo_as_a_task_file_blocks_no_command(unsigned: Spool, place: str) -> None:
    unsigned.enqueue("T", "fifo", [1])
    (claim,) = unsigned.claim(SERVER)
    unsigned.start(claim)
    if place == "finished":
        unsigned.finish(claim)
    os.mkfifo(task_dir(unsigned, claim, place) / "task.new")
    os.rename(task_dir(unsigned, claim, place) / "task.new", task_dir(unsigned, claim, place) / "task")
    # subprocess.run's timeout: a command that blocks fails the test, and is killed
    status = cli(unsigned.path, "status", "T", "fifo", "--json", timeout=30)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == place.upper(), status.stderr
    listed = cli(unsigned.path, "list", "--json", timeout=30)
    assert listed.returncode == 0 and "fifo" in listed.stdout, listed.stderr
    for args in (["stats", "--json"], ["sweep"]):
        assert cli(unsigned.path, *args, timeout=30).returncode == 0
    log = cli(unsigned.path, "log", "T", "fifo", timeout=30)
    assert log.returncode == 1 and "task is a FIFO, not a regular file" in log.stderr and "Traceback" not in log.stderr
    assert cli(unsigned.path, "status", "T", "fifo", timeout=30).returncode != 0  # quarantined by the log's read
    ((entry, reason),) = quarantined(unsigned).items()
    assert entry.startswith(claim.key) and "a FIFO" in reason


@pytest.mark.parametrize("writer", WRITERS)
def test_a_fifo_planted_as_a_format_1_journal_quarantines_its_task_at_its_claim(
    unsigned: Spool, writer: str, held: list[int]
) -> None:
    settings_ = json.loads((unsigned.path / "spool.json").read_text())
    (unsigned.path / "spool.json").write_text(json.dumps({**settings_, "format": 1}))
    spool = Spool(unsigned.path)
    for task_id in ("before", "fifo", "after"):
        spool.enqueue("T", task_id, [1])
    plant_fifo(spool.path / "enqueued" / spool.info("T", "fifo").key / "journal", writer, held)

    def check() -> None:
        assert sorted(c.task_id for c in spool.claim(SERVER, limit=3)) == ["after", "before"]
        with pytest.raises(TaskNotFound):
            spool.status("T", "fifo")

    without_blocking(check)
    ((reason,),) = [list(quarantined(spool).values())]
    assert "journal is a FIFO, not a regular file" in reason


@pytest.mark.parametrize("writer", WRITERS)
def test_a_fifo_planted_as_a_cancel_marker_is_a_request_and_blocks_nothing(
    unsigned: Spool, writer: str, held: list[int]
) -> None:
    unsigned.enqueue("T", "x", [1])
    (claim,) = unsigned.claim(SERVER)
    unsigned.start(claim)
    plant_fifo(task_dir(unsigned, claim, "running") / "cancel", writer, held)

    def check() -> None:
        # whatever a marker holds, its being there is the request (whoever can plant one can cancel anyway)
        assert unsigned.cancel_requested(claim) == "someone"
        assert unsigned.info("T", "x").cancel_requested == "someone"
        assert unsigned.cancel("T", "x") is State.RUNNING  # asked already
        unsigned.fail(claim, "cancelled")

    without_blocking(check)
    assert unsigned.status("T", "x") is State.FAILED


@pytest.mark.parametrize("writer", WRITERS)
def test_a_fifo_planted_as_a_response_is_quarantined_not_waited_on(
    unsigned: Spool, writer: str, held: list[int]
) -> None:
    unsigned.enqueue("T", "x", [1])
    (claim,) = unsigned.claim(SERVER)
    unsigned.start(claim)
    unsigned.store_response(claim, "done", "text/plain")
    unsigned.finish(claim)
    plant_fifo(task_dir(unsigned, claim, "finished") / "response", writer, held)

    def check() -> None:
        with pytest.raises(CorruptTaskFile, match="response is a FIFO, not a regular file"):
            unsigned.response("T", "x")
        assert unsigned.status("T", "x") is State.FINISHED  # the task itself stays

    without_blocking(check)
    ((entry, reason),) = quarantined(unsigned).items()
    assert "response is a FIFO" in reason


@pytest.mark.parametrize("writer", WRITERS)
def test_fifos_in_types_and_daemons_block_neither_types_nor_daemons(
    unsigned: Spool, writer: str, held: list[int]
) -> None:
    unsigned.beat("alive", {"state": "running"})
    plant_fifo(unsigned.path / "types" / "Planted.json", writer, held)
    plant_fifo(unsigned.path / "daemons" / "planted.json", writer, held)

    def check() -> None:
        assert [t.name for t in unsigned.types()] == ["T"]
        with pytest.raises(UnknownTaskType):
            unsigned.get_type("Planted")  # as a type file holding garbage
        assert [d["server"] for d in unsigned.daemons()] == ["alive"]

    without_blocking(check)
    types = cli(unsigned.path, "types", "--json", timeout=30)
    assert types.returncode == 0 and [t["name"] for t in json.loads(types.stdout)["types"]] == ["T"], types.stderr
    stats = cli(unsigned.path, "stats", "--json", timeout=30)
    assert stats.returncode == 0, stats.stderr


@pytest.mark.timeout(120)
def test_a_fifo_planted_as_a_task_file_is_quarantined_by_a_running_daemon_and_the_others_finish(
    unsigned: Spool, tmp_path: Path, held: list[int]
) -> None:
    for task_id in ("good-0", "fifo", "good-1", "good-2"):
        unsigned.enqueue("T", task_id, [1, 2])
    key = unsigned.info("T", "fifo").key
    plant_fifo(unsigned.path / "enqueued" / key / "task", "no writer", held)
    plant_fifo(unsigned.path / "types" / "Planted.json", "no writer", held)  # met by every sweep
    plant_fifo(unsigned.path / "daemons" / "planted.json", "no writer", held)
    log = tmp_path / "daemon.log"
    cmd = [sys.executable, "-m", "spoolatp", "--spool", str(unsigned.path), "daemon", "--workers", "1"]
    cmd += ["--server-id", "fifo-d", "--sweep-interval", "0.2", "--heartbeat", "0.2", "--poll", "0.1"]
    with open(log, "wb") as out:  # a session of its own: a worker stuck on a FIFO is killed with it
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    beat_file = unsigned.path / "daemons" / "fifo-d.json"

    def done() -> bool:  # nothing here opens a FIFO: status() and quarantined() read names and .reason files
        finished = all(unsigned.status("T", f"good-{n}") is State.FINISHED for n in range(3))
        return finished and bool(quarantined(unsigned))

    try:
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done(), log.read_text()
        first = json.loads(beat_file.read_text())["beat"]
        while json.loads(beat_file.read_text())["beat"] < first + 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # its main loop, sweeps and all, goes on
        assert json.loads(beat_file.read_text())["beat"] >= first + 1, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    ((entry, reason),) = quarantined(unsigned).items()
    assert entry.startswith(key) and "task is a FIFO, not a regular file" in reason
    assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------------- permissions


def test_a_new_spool_is_private_to_owner_and_group_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        spool = Spool(tmp_path / "spool")
        spool.register_type("T", "sequence_sum")
        spool.enqueue("T", "x", 1)
    finally:
        os.umask(old)
    for dirpath, dirnames, filenames in os.walk(spool.path):
        for name in [*dirnames, *filenames, ""]:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not stat.S_ISLNK(mode):  # a link's own mode means nothing
                assert mode & 0o007 == 0, (dirpath, name, oct(mode))


def test_trust_warnings_name_each_spot_others_can_write_but_drop(unsigned: Spool) -> None:
    dropin.prepare(unsigned)
    for path, mode in ((unsigned.path, 0o777), (unsigned.path / "enqueued", 0o777), (unsigned.path / "drop", 0o1777)):
        os.chmod(path, mode)
    os.chmod(unsigned.path / "types" / "T.json", 0o666)
    warnings = trust_warnings(unsigned)
    assert any("is not signed" in w for w in warnings)
    for path in (unsigned.path, unsigned.path / "enqueued", unsigned.path / "types" / "T.json"):
        assert sum(w.startswith(f"{path} is writable by others") for w in warnings) == 1, warnings
    assert not any(f"{unsigned.path / 'drop'} " in w for w in warnings)
    os.chmod(unsigned.path, 0o770)
    os.chmod(unsigned.path / "enqueued", 0o770)
    os.chmod(unsigned.path / "types" / "T.json", 0o660)
    assert [w for w in trust_warnings(unsigned) if "writable" in w and str(unsigned.path) in w] == []


# --------------------------------------------------------------------------- limits


def test_an_oversized_input_is_refused_at_enqueue_and_nothing_is_written(signed: Spool, tmp_path: Path) -> None:
    signed.configure(max_input_bytes=4096)
    before = snapshot(signed.path, skip=signed.path / "tmp")
    with pytest.raises(TaskTooLarge, match="more than the 4.0 KiB .* max_input_bytes") as caught:
        signed.enqueue("T", "big", b"x" * 5000)
    assert isinstance(caught.value, ValueError)
    assert snapshot(signed.path, skip=signed.path / "tmp") == before and os.listdir(signed.path / "tmp") == []
    signed.enqueue("T", "big", b"x" * 3000)  # the id is free; a smaller input fits
    out = cli(signed.path, "enqueue", "T", "big2", json.dumps("y" * 5000), env={KEY_ENV: str(signed.key_file)})
    assert out.returncode == 1 and "max_input_bytes" in out.stderr


def test_the_size_limits_are_settings_with_defaults(unsigned: Spool) -> None:
    assert "max_input_bytes" not in unsigned.settings()
    unsigned.enqueue("T", "one-mib", b"x" * (1 << 20))  # well under the 64 MiB default
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="whole number of bytes"):
            unsigned.configure(max_input_bytes=bad)  # type: ignore[arg-type]
    out = cli(unsigned.path, "init", "--max-input-bytes", "16K", "--max-response-bytes", "2M", "--json")
    assert {"max_input_bytes": 16384, "max_response_bytes": 2 << 20}.items() <= json.loads(out.stdout)[
        "settings"
    ].items()
    assert cli(unsigned.path, "init", "--max-input-bytes", "lots").returncode == 2


def test_an_oversized_response_is_refused_and_the_handler_fails_with_the_reason(unsigned: Spool) -> None:
    unsigned.configure(max_response_bytes=1000)
    unsigned.register_type("Large", "testing.large")
    unsigned.enqueue("T", "direct", [1])
    (claim,) = unsigned.claim(SERVER)
    unsigned.start(claim)
    with pytest.raises(TaskTooLarge, match="max_response_bytes"):
        unsigned.store_response(claim, "x" * 1001)
    task_dir = unsigned.path / "running" / SERVER / claim.key
    assert sorted(os.listdir(task_dir)) == ["task"]
    unsigned.enqueue("Large", "via-handler", 5000)
    (claim,) = unsigned.claim(SERVER)
    assert run_claim(unsigned, claim)[0] == "FAILED"
    assert "max_response_bytes" in unsigned.log("Large", "via-handler")[-1].message


# --------------------------------------------------------------------------- faults on a real small file system


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill it up or make it read-only needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0770", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True)
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int = 0) -> Path:
    """Fill the file system up, leaving about ``leave`` bytes free; return the ballast to delete."""
    spacer = mnt / "spacer"
    spacer.write_bytes(b"\0" * leave)
    ballast = mnt / "ballast"
    with contextlib.suppress(OSError), open(ballast, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)
    with contextlib.suppress(OSError), open(ballast, "ab", buffering=0) as f:
        while True:
            f.write(b"\0" * 512)
    spacer.unlink()
    return ballast


def remount(mnt: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(mnt)], check=True)


def visible(spool: Spool) -> dict[str, list[str]]:
    """What a reader can see: tasks by state, ids, slots, tmp/."""
    return {
        "tasks": sorted(f"{t.state.name}:{t.task_id}" for t in spool.tasks()),
        "ids": sorted(os.listdir(spool.path / "ids")),
        "tmp": sorted(os.listdir(spool.path / "tmp")),
    }


def test_a_full_disk_during_enqueue_gives_a_clear_error_and_leaves_nothing(small_fs: Path, key_file: Path) -> None:
    spool = Spool(small_fs / "spool", key_file=key_file)
    spool.register_type("T", "sequence_sum")
    spool.enqueue("T", "before", [1])
    before = visible(spool)
    ballast = fill(small_fs, leave=64 << 10)
    with pytest.raises(StorageError) as caught:
        spool.enqueue("T", "big", os.urandom(512 << 10))
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert str(spool.path) in str(caught.value) and "nothing was enqueued" in str(caught.value)
    assert visible(spool) == before
    with pytest.raises(TaskNotFound):
        spool.status("T", "big")
    ballast.unlink()
    spool.enqueue("T", "big", os.urandom(512 << 10))
    assert [c.task_id for c in spool.claim(SERVER, limit=5)] == ["before", "big"]


def test_a_read_only_spool_refuses_enqueue_and_state_changes_cleanly(small_fs: Path, key_file: Path) -> None:
    spool = Spool(small_fs / "spool", key_file=key_file)
    spool.register_type("T", "sequence_sum")
    spool.enqueue("T", "running", [1])
    (claim,) = spool.claim(SERVER)
    spool.start(claim)
    before = visible(spool)
    remount(small_fs, "ro")
    try:
        with pytest.raises(StorageError, match="Read-only file system") as caught:
            spool.enqueue("T", "new", [1])
        assert caught.value.errno == errno.EROFS
        with pytest.raises(StorageError, match="cannot record a change of task"):
            spool.finish(claim)
        with pytest.raises(StorageError):
            spool.store_response(claim, "result")
        assert visible(spool) == before
    finally:
        remount(small_fs, "rw")
    spool.store_response(claim, "result")
    spool.finish(claim)
    spool.enqueue("T", "new", [1])
    assert visible(spool)["tasks"] == ["ENQUEUED:new", "FINISHED:running"]
    assert spool.response("T", "running") == ("result", "text/xml")


def test_a_full_disk_during_a_state_change_and_a_response_loses_nothing(small_fs: Path) -> None:
    spool = Spool(small_fs / "spool")
    spool.register_type("T", "sequence_sum")
    spool.enqueue("T", "Task001", [1])
    (claim,) = spool.claim(SERVER)
    spool.start(claim)
    ballast = fill(small_fs)
    with pytest.raises(StorageError) as caught:
        spool.store_response(claim, os.urandom(256 << 10))
    assert caught.value.errno == errno.ENOSPC
    assert sorted(os.listdir(spool.path / "running" / SERVER / claim.key)) == ["task"]
    with contextlib.suppress(StorageError):  # a journal line may still fit into the file's last page
        spool.note(claim, "x" * 20000)
    ballast.unlink()
    spool.store_response(claim, "done")
    spool.finish(claim)
    assert spool.status("T", "Task001") is State.FINISHED and spool.response("T", "Task001")[0] == "done"


def test_a_full_or_read_only_disk_during_an_ingest_keeps_the_drop_in(small_fs: Path) -> None:
    spool = Spool(small_fs / "spool")
    spool.register_type("T", "sequence_sum")
    dropin.prepare(spool)
    (dropin.drop_dir(spool) / "Task001.json").write_text(json.dumps({"type": "T", "input": "x" * 100_000}))
    remount(small_fs, "ro")
    try:
        with pytest.raises(OSError) as caught:
            dropin.ingest(spool)
        assert caught.value.errno == errno.EROFS
    finally:
        remount(small_fs, "rw")
    assert dropin.pending(spool) == ["Task001.json"] and list(spool.tasks()) == []
    ballast = fill(small_fs, leave=16 << 10)
    report = dropin.ingest(spool)  # the enqueue fails; the claimed drop-in waits in .ingest/
    assert report.enqueued == [] and report.rejected == [] and len(dropin.pending(spool)) == 1
    assert list(spool.tasks()) == [] and os.listdir(spool.path / "tmp") == []
    ballast.unlink()
    report = dropin.ingest(spool, stale_after=0)
    assert report.enqueued == [("T", "Task001")] and dropin.pending(spool) == []


@pytest.mark.timeout(120)
def test_the_daemon_keeps_running_on_a_read_only_spool_and_resumes(small_fs: Path, tmp_path: Path) -> None:
    spool = Spool(small_fs / "spool")
    spool.register_type("T", "sequence_sum")
    log = tmp_path / "daemon.log"
    cmd = [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), "daemon", "--workers", "1"]
    cmd += ["--sweep-interval", "0.3", "--heartbeat", "0.3", "--poll", "0.2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not spool.daemons() and time.monotonic() < deadline:
            time.sleep(0.05)
        spool.enqueue("T", "due-while-read-only", [1], not_before=0.5)  # its promotion meets EROFS
        remount(small_fs, "ro")
        try:
            time.sleep(2)
            assert proc.poll() is None, log.read_text()
        finally:
            remount(small_fs, "rw")
        spool.enqueue("T", "after", [1, 2])
        deadline = time.monotonic() + 30
        while spool.status("T", "after") is not State.FINISHED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool.status("T", "after") is State.FINISHED, log.read_text()
        while spool.status("T", "due-while-read-only") is not State.FINISHED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool.status("T", "due-while-read-only") is State.FINISHED, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "Read-only file system" in log.read_text() and "Traceback" not in log.read_text()


def test_the_sweep_removes_what_a_crash_left_in_tmp_after_a_safe_age(unsigned: Spool) -> None:
    key = make_key("T", "crashed", time.time_ns())
    (unsigned.path / "tmp" / f"enq~dead~{key}").mkdir()  # an enqueue killed after reserving its id
    (unsigned.path / "tmp" / f"enq~dead~{key}" / "task").write_bytes(b"SPOOLATP-TASK 1 99 half")
    os.symlink(key, unsigned.path / "ids" / "T~crashed")
    (unsigned.path / "tmp" / "set~dead~spool.json").write_text("{")
    (unsigned.path / "tmp" / "junk").write_text("?")
    time.sleep(1.2)
    (unsigned.path / "tmp" / "set~alive~spool.json").write_text("{")  # in progress right now
    swept = unsigned.sweep_tmp(grace=1.0)
    assert sorted(swept) == sorted([f"enq~dead~{key}", "set~dead~spool.json", "junk"])
    assert os.listdir(unsigned.path / "tmp") == ["set~alive~spool.json"]
    unsigned.enqueue("T", "crashed", [1])  # its id is free again


# --------------------------------------------------------------------------- fuzzing

FUZZ_KEY = b"0123456789abcdef0123456789abcdef"
FUZZ_BIND = make_key("T", "fuzz", 1)


def mutate(data: bytes, how: st.DataObject) -> bytes:
    op = how.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
    i = how.draw(st.integers(0, max(0, len(data) - 1)))
    if op == "flip":
        return data[:i] + bytes([data[i] ^ how.draw(st.integers(1, 255))]) + data[i + 1 :]
    if op == "truncate":
        return data[:i]
    if op == "insert":
        return data[:i] + how.draw(st.binary(min_size=1, max_size=8)) + data[i:]
    if op == "delete":
        return data[:i] + data[i + how.draw(st.integers(1, 8)) :]
    head, _, body = data.partition(b"\n")
    fields = head.split(b" ")
    j = how.draw(st.integers(0, len(fields) - 1))
    fields[j] = how.draw(
        st.sampled_from([b"", b"1", b"2", b"-1", b"99999999999999999999", b"hmac-sha256::", fields[j] * 2])
    )
    return b" ".join(fields) + b"\n" + body


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=40), st.data())
def test_fuzz_unseal_raises_only_CorruptTaskFile_and_never_accepts_a_change(
    payload: bytes, meta: str, how: st.DataObject
) -> None:
    meta = meta.replace("\n", " ")
    for magic in (TASK_MAGIC, RESPONSE_MAGIC):
        good = seal(magic, payload, meta, key=FUZZ_KEY, bind=FUZZ_BIND)
        assert unseal(magic, good, "f", key=FUZZ_KEY, bind=FUZZ_BIND)[0] == payload
        bad = mutate(good, how)
        try:
            got, _ = unseal(magic, bad, "f", key=FUZZ_KEY, bind=FUZZ_BIND)
        except CorruptTaskFile:
            continue
        assert got == payload  # only a harmless spelling of the header (e.g. "093" for 93) may pass
        with pytest.raises(CorruptTaskFile):
            unseal(magic, bad, "f")  # and never without the key
        with pytest.raises(CorruptTaskFile):
            unseal(magic, good, "f", key=FUZZ_KEY, bind=make_key("T", "other", 1))


def fuzzed_task_files() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=200).map(lambda b: b"SPOOLATP-TASK 2 " + b),
        st.binary(max_size=200).map(lambda p: seal(TASK_MAGIC, p)),  # unsigned, a correct checksum
        st.binary(max_size=200).map(lambda p: seal(TASK_MAGIC, p, key=ATTACKER_KEY, bind=FUZZ_BIND)),
        st.builds(lambda p, n: seal(TASK_MAGIC, p, key=FUZZ_KEY, bind=FUZZ_BIND)[:n], st.binary(), st.integers(0, 100)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzzed_task_files(), min_size=1, max_size=4))
def test_fuzz_the_task_file_reader_quarantines_everything_and_raises_nothing_else(files: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        key_path = write_key(Path(tmp) / "k", content=FUZZ_KEY)
        spool = Spool(Path(tmp) / "spool", key_file=key_path)
        spool.register_type("T", "sequence_sum")
        for n, data in enumerate(files):
            key = make_key("T", f"fuzz{n}", 1 + n)
            (spool.path / "enqueued" / key).mkdir()
            (spool.path / "enqueued" / key / "task").write_bytes(data)
        with pytest.raises(QueueEmpty):
            spool.claim(SERVER, limit=10)
        assert len(quarantined(spool)) == len(files)


def json_values() -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    )


def documents() -> st.SearchStrategy[bytes]:
    keys = st.sampled_from(["type", "id", "input", "priority", "not_before", "extra"])
    doc = st.dictionaries(keys, json_values() | st.sampled_from(["T", "../x", "2026-11-29T12:00:00", ""]), max_size=5)
    return st.one_of(
        st.binary(max_size=300),
        doc.map(lambda d: json.dumps(d).encode()),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 5000).map(lambda n: b'{"type": "T", "input": ' + b"[" * n + b"]" * n + b"}"),
        st.sampled_from([b'{"type": "T", "type": "T"}', b'{"type": NaN}', b'{"type": "T", "not_before": 1e400}']),
    )


@settings(max_examples=500, deadline=None)
@given(documents())
def test_fuzz_the_drop_in_parser_raises_only_Rejected(data: bytes) -> None:
    try:
        doc = dropin.parse_document(data)
    except dropin.Rejected:
        return
    assert isinstance(doc, dict) and isinstance(doc["type"], str)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents(), min_size=1, max_size=3))
def test_fuzz_ingest_turns_every_document_into_a_task_or_a_rejection(datas: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool")
        spool.register_type("T", "sequence_sum")
        dropin.prepare(spool)
        for n, data in enumerate(datas):
            (dropin.drop_dir(spool) / f"d{n}.json").write_bytes(data)
        report = dropin.ingest(spool)
        assert len(report.enqueued) + len(report.rejected) == len(datas), report
        assert dropin.pending(spool) == []
