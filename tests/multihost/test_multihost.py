"""Issue #7: daemons on three hosts share one spool over a network file system.

Each test runs once per backend (sshfs, GlusterFS) on a rig of three hosts,
h1..h3: network namespaces, each with its own FUSE mount of the server's
export (see rig/rig.sh). Daemons run "on" hosts with the issue's options
(2 workers, heartbeat 1 s, presumed dead after 5 s, sweeps every 1 s, polling
every 0.5 s). Tasks are ``Mark`` tasks: the handler appends one line per run
to a marker file on the running host's own disk.

What is proved is read on the server's side (the export directory, never a
mount): every task's journal holds exactly one FINISHED entry, the spool's
counts show every task FINISHED, no id was lost, and the marker files say
how often and where each handler ran.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rigkit import (
    DAEMON_OPTS,
    DROPPER,
    HOSTS,
    PRODUCER,
    Audit,
    Cluster,
    Rig,
    audit,
    ended,
    held,
    just_started,
    listdir,
    make_spool,
    read_markers,
    reasons,
    task_ids,
    tasks_for,
    wait_ended,
    wait_for,
)

pytestmark = pytest.mark.multihost

DEAD_AFTER = DAEMON_OPTS["dead_after"]
SWEEP = DAEMON_OPTS["sweep_interval"]
#: the latest a dead host's tasks may be re-enqueued after its death: its last heartbeat turns
#: dead_after old by then, a sweep of another host (every 1 s, jittered) acts on it; plus slack
#: for 1 s mtime resolution and a busy 2-core machine
GRACE_MAX = DEAD_AFTER + 2 * 1.2 * SWEEP + 3.0
#: the earliest: not before its heartbeat is dead_after old (it beats every 1 s; 1 s mtime resolution)
GRACE_MIN = DEAD_AFTER - 2.5


def assert_all_finished_once(a: Audit, n: int, truth_dir: Path, cluster: Cluster) -> None:
    """The issue's proof: none lost, each task FINISHED, each journal with exactly one FINISHED entry."""
    diag = f"\nquarantine: {reasons(truth_dir)}\n{cluster.tails()}"
    assert not a.missing, f"{len(a.missing)} of {n} tasks lost (gone from the spool): {a.missing[:10]}{diag}"
    assert not a.quarantined, f"{len(a.quarantined)} tasks quarantined: {a.quarantined[:5]}{diag}"
    others = {state: count for state, count in a.counts.items() if state != "FINISHED" and count}
    assert a.counts["FINISHED"] == n and not others, f"spool counts {a.counts}, expected {n} FINISHED only{diag}"
    bad = a.finished_not_once()
    assert not bad, f"{len(bad)} tasks without exactly one FINISHED entry (id: entries): {dict(list(bad.items())[:10])}"
    unfinished = a.not_finished()
    assert not unfinished, f"tasks not FINISHED: {dict(list(unfinished.items())[:10])}{diag}"


# --------------------------------------------------------------------------- 1. throughput


@pytest.mark.timeout(900)
def test_tasks_enqueued_from_two_hosts_at_once_each_finish_exactly_once_on_all_hosts(
    rig: Rig, cluster: Cluster, figures: list[str]
) -> None:
    n = tasks_for(rig.fs)
    name, marker = "throughput", "markers-throughput"
    truth = rig.export / name
    make_spool(rig.mount("h1") / name, timeout=900)
    for h in HOSTS:
        cluster.start(h, name)
    cluster.wait_up(truth, HOSTS)

    half = n // 2
    jobs = [
        ("h1", PRODUCER, [str(rig.mount("h1") / name), "a", "0", str(half), "0", marker]),
        ("h2", PRODUCER, [str(rig.mount("h2") / name), "b", "0", str(n - half), "0", marker]),
    ]
    t0 = time.time()
    outs = rig.run_on_many(jobs, timeout=60 + n / 10)
    enq_end = max(float(o.split()[1]) for o in outs)
    waited = wait_ended(truth, n, timeout=60 + n / 8)
    ids = task_ids("a", half) + task_ids("b", n - half)
    t_audit = time.monotonic()
    a = audit(truth, ids, read_markers(rig, marker))
    t_audit = time.monotonic() - t_audit

    assert_all_finished_once(a, n, truth, cluster)
    # A handler runs once, unless its holder was presumed dead (a heartbeat older than --dead-after on a
    # loaded machine) and its task re-enqueued: then the first run's result is discarded, never finished.
    requeued = [i for i in ids if a.stories[i].requeued]
    unexplained = [i for i in ids if a.runs(i) != 1 and not a.stories[i].requeued]
    assert not unexplained, f"handlers run other than once without a re-enqueue:\n{a.explain(unexplained)}"
    elsewhere = [i for i in ids if a.markers[str(a.finished_by(i))][i] < 1]
    assert not elsewhere, f"FINISHED by a host that did not run the handler:\n{a.explain(elsewhere)}"
    per_host = a.per_host()
    assert set(per_host) == set(HOSTS), f"tasks finished per host: {per_host}; every host's daemon should run some"

    took = a.last_finish() - t0
    figures.append(
        f"{rig.fs}: {n} tasks enqueued from h1+h2 at once in {enq_end - t0:.1f} s "
        f"({n / (enq_end - t0):.0f}/s), all finished after {took:.1f} s: {n / took:.0f} tasks/s "
        f"with 3 hosts x {DAEMON_OPTS['workers']} workers; per host {per_host}; "
        f"waited {waited:.0f} s, audit {t_audit:.1f} s; {len(requeued)} re-enqueued "
        f"(given back after a false error, or a holder presumed dead)"
        f"{': ' + a.explain(requeued, 2) if requeued else ''}"
    )


# --------------------------------------------------------------------------- 2. host death


@pytest.mark.timeout(300)
def test_killed_host_tasks_are_rerun_elsewhere_within_the_heartbeat_grace(
    rig: Rig, cluster: Cluster, figures: list[str]
) -> None:
    n, pause = 40, 1.5
    name, marker = "hostdeath", "markers-hostdeath"
    truth = rig.export / name
    make_spool(rig.mount("h1") / name, timeout=600)
    for h in HOSTS:
        cluster.start(h, name)
    cluster.wait_up(truth, HOSTS)
    rig.run_on("h1", PRODUCER, str(rig.mount("h1") / name), "k", "0", str(n), str(pause), marker)
    # kill h2 just after it started a task: its tasks start and end in step, and a kill between one
    # task's end and the next claim would find it holding nothing
    wait_for(
        lambda: len(held(truth, "h2")) >= 2 and just_started(truth, "h2", pause / 3) and ended(truth) >= 4,
        60,
        "h2 just starting a task while holding two",
    )

    try:
        rig.kill("h2")
        t_kill = time.time()
        time.sleep(0.5)  # requests the server had already received are served; nothing new can come
        victims = sorted(k.split("~")[2] for k in held(truth, "h2"))
        assert victims, "h2 held no task when it died; the test proves nothing"
        wait_ended(truth, n, timeout=120)
        ids = task_ids("k", n)
        a = audit(truth, ids, read_markers(rig, marker))
    finally:
        rig.revive("h2")  # the host boots again, for the tests after this one

    assert_all_finished_once(a, n, truth, cluster)
    detect, recover = [], []
    for v in victims:
        story = a.stories[v]
        assert a.finished_by(v) in ("h1", "h3"), f"{v}, held by h2 when it died, was finished by {a.finished_by(v)}"
        assert story.requeued, f"{v} was finished without being re-enqueued: {story}"
        t_requeue = story.requeued[0][0]
        assert "presumed dead" in story.requeued[0][1], story.requeued
        assert t_requeue - t_kill <= GRACE_MAX, (
            f"{v} re-enqueued {t_requeue - t_kill:.1f} s after h2 died; the grace is {DEAD_AFTER:g} s "
            f"(+ sweeps: at most {GRACE_MAX:.1f} s)"
        )
        assert t_requeue - t_kill >= GRACE_MIN, (
            f"{v} re-enqueued {t_requeue - t_kill:.1f} s after h2 died: before its heartbeat was {DEAD_AFTER:g} s old"
        )
        detect.append(t_requeue - t_kill)
        recover.append(story.finished[0][2] - t_kill)
    survivors = ("h1", "h3")
    twice = [i for i in ids if a.runs(i, survivors) > 1]
    assert not twice, f"tasks run twice on surviving hosts: {twice}"
    unseen = [i for i in ids if a.finished_by(i) in survivors and a.markers[str(a.finished_by(i))][i] != 1]
    assert not unseen, f"tasks finished by a survivor that did not run them there: {unseen}"
    figures.append(
        f"{rig.fs}: host h2 killed holding {len(victims)} tasks; re-enqueued {min(detect):.1f}-{max(detect):.1f} s "
        f"after (--dead-after {DEAD_AFTER:g}), finished elsewhere {max(recover):.1f} s after the kill "
        f"(tasks take {pause:g} s)"
    )


# --------------------------------------------------------------------------- 3. partition


@pytest.mark.timeout(300)
def test_host_cut_off_and_reconnected_finishes_nothing_twice_and_loses_nothing(
    rig: Rig, cluster: Cluster, figures: list[str]
) -> None:
    n1, n2, pause = 30, 24, 2.0
    # longer than sshfs's ServerAlive limit (3 x 5 s) and GlusterFS's ping-timeout (8 s, set by the rig
    # fixture): the connection is declared dead and made anew, not merely resumed
    cut_for = 22.0
    name, marker = "partition", "markers-partition"
    truth = rig.export / name
    make_spool(rig.mount("h1") / name, timeout=600)
    for h in HOSTS:
        cluster.start(h, name)
    cluster.wait_up(truth, HOSTS)
    rig.run_on("h1", PRODUCER, str(rig.mount("h1") / name), "p", "0", str(n1), str(pause), marker)
    wait_for(lambda: len(held(truth, "h2")) >= 2, 60, "h2 running two tasks")

    rig.cut("h2")
    t_cut = time.time()
    try:
        victims = sorted(k.split("~")[2] for k in held(truth, "h2"))
        taken = wait_for(
            lambda: not set(victims) & {k.split("~")[2] for k in held(truth, "h2")}, cut_for, "h2's tasks re-enqueued"
        )
        time.sleep(max(0.0, cut_for - (time.time() - t_cut)))
    finally:
        rig.heal("h2")
    t_heal = time.time()
    # the mount comes back when the file system's client has reconnected (GlusterFS's took up to ~30 s on the
    # rig): h2's daemon shows it is back by a heartbeat written after the heal, and only then may claim again
    back = wait_for(
        lambda: (truth / "daemons" / "h2.json").stat().st_mtime > t_heal, 90, "h2's heartbeat after the link came back"
    )

    # h2's daemon survived and works again: it takes part in a second batch
    rig.run_on("h3", PRODUCER, str(rig.mount("h3") / name), "q", "0", str(n2), "0.5", marker, timeout=300)
    wait_ended(truth, n1 + n2, timeout=150)
    ids = task_ids("p", n1) + task_ids("q", n2)
    a = audit(truth, ids, read_markers(rig, marker))

    assert_all_finished_once(a, n1 + n2, truth, cluster)
    assert cluster.daemons["h2"].alive(), f"h2's daemon died while cut off:\n{cluster.tail('h2', 40)}"
    second = [i for i in task_ids("q", n2) if a.finished_by(i) == "h2"]
    assert second, f"h2 ran none of the tasks enqueued after it came back: {a.per_host()}\n{cluster.tail('h2', 40)}"
    for v in victims:
        assert a.finished_by(v) in ("h1", "h3"), f"{v} was held by h2 when it was cut off, yet h2 finished it"
    log = cluster.daemons["h2"].log_text()
    discarded = log.count("result discarded")
    figures.append(
        f"{rig.fs}: h2 cut off for {cut_for:g} s holding {len(victims)} tasks: re-enqueued by the others "
        f"{taken:.1f} s after the cut; h2 beat again {back:.1f} s after the link came back, "
        f"discarded {discarded} stale results "
        f"and ran {len(second)} of {n2} new tasks; its log has {log.count('WARNING')} warnings"
    )


# --------------------------------------------------------------------------- 4. clock skew


@pytest.mark.timeout(240)
def test_hosts_with_skewed_clocks_steal_no_live_tasks(rig: Rig, cluster: Cluster, figures: list[str]) -> None:
    n, pause, timeout = 24, 2.5, 20.0
    name, marker = "skew", "markers-skew"
    truth = rig.export / name
    # an hour of skew dwarfs both the heartbeat grace (5 s) and the tasks' timeout (20 s): a daemon that
    # judged time by its own clock would presume the others dead or their tasks abandoned
    skews = {"h1": None, "h2": "3600", "h3": "-3600"}
    make_spool(rig.mount("h1") / name, timeout=timeout)
    for h, skew in skews.items():
        cluster.start(h, name, env={"SPOOLATP_CLOCK_OFFSET": skew} if skew else None)
    cluster.wait_up(truth, HOSTS)
    t0 = time.time()
    rig.run_on("h1", PRODUCER, str(rig.mount("h1") / name), "c", "0", str(n), str(pause), marker)
    wait_ended(truth, n, timeout=120)
    ids = task_ids("c", n)
    a = audit(truth, ids, read_markers(rig, marker))

    assert_all_finished_once(a, n, truth, cluster)
    stolen = {i: s.requeued for i, s in a.stories.items() if s.requeued}
    assert not stolen, f"live tasks taken from their holders (id: re-enqueue entries): {stolen}"
    rerun = {i: a.runs(i) for i in ids if a.runs(i) != 1}
    assert not rerun, f"handlers run other than once (id: runs): {rerun}"
    claimed = {i: s.scheduled_on for i, s in a.stories.items() if len(s.scheduled_on) != 1}
    assert not claimed, f"tasks claimed more than once: {claimed}"
    per_host = a.per_host()
    assert set(per_host) == set(HOSTS), f"tasks finished per host: {per_host}; the skewed hosts should work too"
    for h in ("h2", "h3"):  # the offset was in force: the daemon noticed its clock is off the spool's
        assert "clock" in cluster.daemons[h].log_text().lower(), (
            f"{h} ran with SPOOLATP_CLOCK_OFFSET={skews[h]} but its log never mentions its clock; "
            f"was the offset injected?\n{cluster.tail(h)}"
        )
    figures.append(
        f"{rig.fs}: clocks skewed +1 h on h2 and -1 h on h3: {n} tasks of {pause:g} s, per host {per_host}, "
        f"none stolen, done in {a.last_finish() - t0:.1f} s"
    )


# --------------------------------------------------------------------------- 5. drop-ins


@pytest.mark.timeout(180)
def test_dropins_written_on_one_host_are_ingested_by_daemons_on_others(
    rig: Rig, cluster: Cluster, figures: list[str]
) -> None:
    n = 20
    name, marker = "dropin", "markers-dropin"
    truth = rig.export / name
    make_spool(rig.mount("h1") / name, timeout=600)
    for h in ("h2", "h3"):  # none on h1, the host that writes the drop-ins
        cluster.start(h, name)
    cluster.wait_up(truth, ("h2", "h3"))
    out = rig.run_on("h1", DROPPER, str(rig.mount("h1") / name / "drop"), "d", str(n), "0", marker)
    written = float(out.split()[1])
    wait_ended(truth, n, timeout=90)
    ids = [f"d{i:03d}" for i in range(n)]
    a = audit(truth, ids, read_markers(rig, marker))

    assert_all_finished_once(a, n, truth, cluster)
    assert all(a.finished_by(i) in ("h2", "h3") for i in ids), a.per_host()
    assert not [i for i in ids if a.markers["h1"][i]], "a handler ran on h1, which has no daemon"
    rerun = {i: a.runs(i) for i in ids if a.runs(i) != 1}
    assert not rerun, f"drop-ins run other than once (id: runs): {rerun}"
    not_dropped = [i for i in ids if "drop-in" not in a.stories[i].origin]
    assert not not_dropped, f"tasks whose enqueue record does not name their drop-in: {not_dropped[:5]}"
    drop = truth / "drop"
    left = [e for e in listdir(drop) if e.endswith(".json")]
    assert not left, f"drop-ins never ingested: {left}"
    assert not listdir(drop / "rejected"), f"drop-ins rejected: {listdir(drop / 'rejected')}"
    assert not listdir(drop / ".ingest"), f"drop-ins stuck mid-ingest: {listdir(drop / '.ingest')}"
    figures.append(
        f"{rig.fs}: {n} drop-ins written on h1, ingested and run on {a.per_host()}; "
        f"last finished {a.last_finish() - written:.1f} s after the last was written"
    )
