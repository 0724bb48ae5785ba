"""End-to-end tests of the web dashboard: a real daemon, a real uvicorn server, headless Chromium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` and the
``selenium`` package; ``.ci/run`` installs them, and they are skipped, with
the reason, where they are missing. Selenium is given the driver's path, so
Selenium Manager never downloads anything.

Screenshots of every page go to ``$SPOOLATP_SCREENSHOTS`` (default: a new
temporary directory); the path is printed at the start and end of the run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spoolatp import Spool, State
from spoolatp.format import TASK_MAGIC, make_key, seal

pytest.importorskip("starlette", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("jinja2", reason="the web extra is not installed: pip install -e '.[web]'")

from spoolatp import web  # noqa: E402  (after the skips: it needs the web extra)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SERVER_ID = "web-test-daemon"
TOKEN = "s3cret-web-token"
BULK = 100_000


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def web_server(spool_path: Path, log: Path, *, token: str | None = None) -> Iterator[str]:
    """``spoolatp.web.serve`` in a real subprocess on a free loopback port; yields its base URL."""
    port = free_port()
    script = (
        "import os, sys; from spoolatp.web import serve; "
        "token = os.environ.get('SPOOLATP_TEST_TOKEN'); "
        "serve(sys.argv[1], port=int(sys.argv[2]), allow_actions=bool(token), token=token)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPOOLATP_TEST_TOKEN"}
    if token:
        env["SPOOLATP_TEST_TOKEN"] = token  # not on the command line, where ps shows it
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(spool_path), str(port)], stdout=out, stderr=out, env=env
        )
    base = f"http://127.0.0.1:{port}"
    try:
        ready = base + "/static/app.js"  # not a page: the first page request is left to the test
        wait_for(lambda: proc.poll() is not None or get(ready).status == 200, 30, f"the web server ({log})")
        assert proc.poll() is None, f"web server exited with {proc.returncode}: {log.read_text()}"
        yield base
    finally:
        stop(proc)


@contextlib.contextmanager
def daemon(spool_path: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "spoolatp", "--spool", str(spool_path), "daemon", "--workers", "1"]
    command += ["--heartbeat", "0.5", "--grace", "5", "--server-id", SERVER_ID, "--log-level", "WARNING"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        stop(proc, 30)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def get(url: str, *, data: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Reply:
    """GET (or POST a form, with ``data``), following no redirect; errors become replies too."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=60) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())
    except (urllib.error.URLError, ConnectionError):
        return Reply(0, {}, b"")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def task_url(base: str, type_id: str, task_id: str, suffix: str = "") -> str:
    return base + web.task_url(type_id, task_id, suffix)


def wait_ended(spool: Spool, pairs: list[tuple[str, str]], timeout: float = 60.0) -> None:
    def ended() -> bool:
        return all(spool.status(t, i).terminal for t, i in pairs)

    wait_for(ended, timeout, f"tasks {pairs} to end")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def screenshots(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where screenshots go: ``$SPOOLATP_SCREENSHOTS`` or a new temporary directory (printed)."""
    path = Path(os.environ.get("SPOOLATP_SCREENSHOTS") or tempfile.mkdtemp(prefix="spoolatp-screenshots-"))
    path.mkdir(parents=True, exist_ok=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(text: str) -> None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            print(f"\n{text}", flush=True)

    say(f"web dashboard screenshots: {path}")
    yield path
    shots = sorted(p.name for p in path.glob("*.png"))
    say(f"web dashboard screenshots ({len(shots)}): {path}")


@dataclass
class Site:
    spool: Spool
    base: str  # read-only dashboard
    admin: str  # dashboard with actions and TOKEN
    logs: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A spool with a real daemon working on it, and two dashboards: read-only and with actions."""
    root = tmp_path_factory.mktemp("web")
    spool = Spool(root / "spool")
    with (
        daemon(spool.path, root / "daemon.log"),
        web_server(spool.path, root / "web.log") as base,
        web_server(spool.path, root / "admin.log", token=TOKEN) as admin,
    ):
        yield Site(spool, base, admin, root)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium driven by Selenium, with the system's browser and driver only."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"no {CHROMIUM} or {CHROMEDRIVER}: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    old = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except Exception as exc:
        pytest.skip(f"headless chromium did not start: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        if old is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = old


def shoot(driver: Any, folder: Path, name: str) -> None:
    """Save a screenshot of the whole page, beyond the window, as ``folder/name.png``."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    (folder / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def present(driver: Any, css: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_elements(By.CSS_SELECTOR, css))


def texts(driver: Any, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [str(e.text) for e in driver.find_elements(By.CSS_SELECTOR, css)]


def until(driver: Any, condition: Callable[[Any], Any], timeout: float = 30.0, what: str = "the page") -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d: Any) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:  # the live part was swapped while we looked
            return False

    return WebDriverWait(driver, timeout).until(check, message=f"waiting for {what}")


# --------------------------------------------------------------------------- browser tests


def test_overview_shows_counts_types_throughput_and_daemon_after_a_real_daemon_runs_tasks(
    site: Site, browser: Any, screenshots: Path
) -> None:
    spool = site.spool
    spool.register_type("Overview", "testing.echo", timeout=30)
    spool.register_type("OverviewFail", "testing.raise", timeout=30, maxrestart=0)
    browser.get(site.base + "/")
    browser.execute_script("window.__spoolatpMarker = 42")
    pairs = [("Overview", f"o-{n}") for n in range(3)] + [("OverviewFail", "f-0")]
    for t, i in pairs:
        spool.enqueue(t, i, "boom" if t == "OverviewFail" else {"n": i})
    wait_ended(spool, pairs)

    def cell(type_id: str, state: str) -> str:
        return text_of(browser, f'#types tr[data-type="{type_id}"] td[data-state="{state}"]')

    until(
        browser,
        lambda d: cell("Overview", "FINISHED") == "3" and cell("OverviewFail", "FAILED") == "1",
        what="type counts",
    )
    counts = spool.counts()
    until(
        browser,
        lambda d: all(text_of(d, f'[data-count="{s.name}"]') == str(counts[s.name]) for s in State),
        what=f"state counts {counts}",
    )
    assert browser.execute_script("return window.__spoolatpMarker") == 42, "the page was reloaded instead of refreshed"
    until(
        browser,
        lambda d: (
            present(d, f'#daemons tr[data-server="{SERVER_ID}"]')
            and "ago" in text_of(d, f'#daemons tr[data-server="{SERVER_ID}"]')
        ),
        what="the daemon's heartbeat",
    )
    row = text_of(browser, f'#daemons tr[data-server="{SERVER_ID}"]')
    assert socket.gethostname() in row and SERVER_ID in row
    assert text_of(browser, f'#daemons tr[data-server="{SERVER_ID}"] td.num') == "1"  # workers
    assert int(text_of(browser, "#finished-hour")) >= 3
    assert int(text_of(browser, "#failed-hour")) >= 1
    assert present(browser, "#throughput svg rect.bar-finished") and present(browser, "#throughput svg rect.bar-failed")
    shoot(browser, screenshots, "01-overview")


def test_overview_shows_running_task_of_daemon_and_oldest_waiting_age(
    site: Site, browser: Any, screenshots: Path
) -> None:
    spool = site.spool
    spool.register_type("Slow", "testing.sleep", timeout=60)
    spool.enqueue("Slow", "slow-1", {"seconds": 3, "steps": 3})
    spool.enqueue("Slow", "slow-2", {"seconds": 0.1})  # waits behind slow-1: the daemon has one worker
    browser.get(site.base + "/")
    until(
        browser,
        lambda d: "Slow/slow-1" in text_of(d, f'#daemons tr[data-server="{SERVER_ID}"]'),
        what="the running task",
    )
    until(browser, lambda d: "Slow/slow-2" in text_of(d, "#oldest"), what="the oldest waiting task")
    assert text_of(browser, "#oldest .count").endswith(" s")
    shoot(browser, screenshots, "02-overview-busy")
    wait_ended(spool, [("Slow", "slow-1"), ("Slow", "slow-2")])
    until(browser, lambda d: "nothing waits" in text_of(d, "#oldest"), what="the queue to empty")


def test_task_list_filters_by_state_and_type_searches_ids_and_pages_newest_first(
    site: Site, browser: Any, screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    spool = site.spool
    spool.register_type("FilterA", "testing.echo", timeout=30)
    spool.register_type("FilterB", "testing.raise", timeout=30, maxrestart=0)
    pairs = [("FilterA", f"a-{n}") for n in range(1, 4)] + [("FilterB", "b-1"), ("FilterB", "b-2")]
    for t, i in pairs:
        spool.enqueue(t, i, i)
        time.sleep(0.002)  # distinct enqueue stamps: a defined newest-first order
    wait_ended(spool, pairs)

    browser.get(site.base + "/tasks")
    Select(browser.find_element(By.NAME, "state")).select_by_value("FAILED")
    Select(browser.find_element(By.NAME, "type")).select_by_value("FilterB")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    until(browser, lambda d: "state=FAILED" in d.current_url, what="the filtered list")
    rows = browser.find_elements(By.CSS_SELECTOR, "#task-table tr.task")
    assert [r.get_attribute("data-state") for r in rows] == ["FAILED", "FAILED"]
    assert [r.get_attribute("data-type") for r in rows] == ["FilterB", "FilterB"]
    assert texts(browser, "#task-table td.id") == ["b-2", "b-1"]
    assert text_of(browser, "#total") == "2"
    shoot(browser, screenshots, "03-tasks-filtered")

    browser.get(site.base + "/tasks?type=FilterA")
    assert texts(browser, "#task-table td.id") == ["a-3", "a-2", "a-1"]  # newest first
    assert all(t == "1" for t in texts(browser, "#task-table tr.task td.num"))  # attempts
    assert all(SERVER_ID in t for t in texts(browser, "#task-table tr.task td:nth-child(6)"))  # server (host)

    search = browser.find_element(By.NAME, "q")
    search.send_keys("A-2")  # case-insensitive
    search.submit()
    until(browser, lambda d: "q=A-2" in d.current_url, what="the search")
    assert texts(browser, "#task-table td.id") == ["a-2"]
    shoot(browser, screenshots, "04-tasks-search")

    browser.get(site.base + "/tasks?type=FilterA&size=2")
    assert texts(browser, "#task-table td.id") == ["a-3", "a-2"]
    browser.find_element(By.CSS_SELECTOR, "nav.pages a[rel=next]").click()
    until(browser, lambda d: "page=2" in d.current_url, what="page 2")
    assert texts(browser, "#task-table td.id") == ["a-1"]


def test_task_page_shows_progress_while_it_runs_then_its_whole_log(site: Site, browser: Any, screenshots: Path) -> None:
    spool = site.spool
    spool.register_type("Progress", "testing.sleep", timeout=60)
    spool.enqueue("Progress", "p-1", {"seconds": 4, "steps": 8}, message="enqueued by the web test")
    browser.get(task_url(site.base, "Progress", "p-1"))
    browser.execute_script("window.__spoolatpMarker = 7")

    def progressing(d: Any) -> bool:
        if not present(d, "#progress"):
            return False
        value = d.find_element("css selector", "#progress").get_attribute("value")
        return value is not None and 0 < float(value) < 1

    until(browser, progressing, what="a progress bar between 0 and 1")
    assert text_of(browser, "#state") == "RUNNING"
    shoot(browser, screenshots, "05-task-running")
    until(browser, lambda d: text_of(d, "#state") == "FINISHED", timeout=40, what="FINISHED")
    assert browser.execute_script("return window.__spoolatpMarker") == 7, "the page was reloaded instead of refreshed"
    assert not present(browser, "#progress")
    log = texts(browser, "#log tr.entry td.message")
    assert log[0] == "enqueued by the web test"
    assert "sleeping 4 s in 8 step(s)" in log and "slept 4 s" in log and "step 8 of 8" in log
    assert len(log) == len(spool.log("Progress", "p-1"))
    assert text_of(browser, "#no-response") == "the handler stored no response"


def test_task_page_shows_a_text_response_and_offers_a_binary_one_for_download(
    site: Site, browser: Any, screenshots: Path
) -> None:
    spool = site.spool
    spool.register_type("Echo", "testing.echo", timeout=30)
    spool.register_type("Large", "testing.large", timeout=30)
    spool.enqueue("Echo", "e-1", {"greeting": "<b>hello</b> & bye"})
    spool.enqueue("Large", "l-1", 3000)
    wait_ended(spool, [("Echo", "e-1"), ("Large", "l-1")])

    browser.get(task_url(site.base, "Echo", "e-1"))
    assert text_of(browser, "#state") == "FINISHED"
    assert text_of(browser, "#response-type") == "application/json"
    assert text_of(browser, "#response-text") == '{"greeting": "<b>hello</b> & bye"}'
    assert not present(browser, "#response-text b")
    shoot(browser, screenshots, "06-task-text-response")
    reply = get(browser.find_element("css selector", "#download").get_attribute("href"))
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/json")
    assert json.loads(reply.body) == {"greeting": "<b>hello</b> & bye"}

    browser.get(task_url(site.base, "Large", "l-1"))
    assert not present(browser, "#response-text")
    assert "download" in text_of(browser, "#response-note")
    assert text_of(browser, "#response-type") == "application/octet-stream"
    shoot(browser, screenshots, "07-task-binary-response")
    reply = get(browser.find_element("css selector", "#download").get_attribute("href"))
    assert reply.status == 200 and reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["content-disposition"].startswith("attachment;")
    assert reply.body == (bytes(range(256)) * 12)[:3000]


def test_html_and_script_in_task_id_log_message_and_response_are_shown_as_text(
    site: Site, browser: Any, screenshots: Path
) -> None:
    spool = site.spool
    spool.register_type("Xss", "testing.raise", timeout=30, maxrestart=0)
    spool.register_type("XssEcho", "testing.echo", timeout=30)
    evil_id = "<script>window.pwned=1<script><img src=x onerror=window.pwned=2>"
    evil_message = "</script><script>window.pwned=3</script><img src=y onerror=window.pwned=4>"
    spool.enqueue("Xss", evil_id, evil_message, message="<script>window.pwned=5</script>")
    spool.enqueue("XssEcho", evil_id, "</pre><script>window.pwned=6</script>")
    wait_ended(spool, [("Xss", evil_id), ("XssEcho", evil_id)])

    for name, url in (
        ("08-xss-task-log", task_url(site.base, "Xss", evil_id)),
        ("09-xss-task-response", task_url(site.base, "XssEcho", evil_id)),
        ("10-xss-list", site.base + "/tasks?q=" + urllib.parse.quote("<script>")),
        ("11-xss-overview", site.base + "/"),
    ):
        browser.get(url)
        time.sleep(0.3)  # let an image's onerror fire, were there one
        assert browser.execute_script("return window.pwned") is None, url
        assert browser.execute_script("return document.scripts.length") == 1, url  # app.js alone
        assert not present(browser, "img"), url
        shoot(browser, screenshots, name)
        if "Xss/" in url:
            assert text_of(browser, "#task-id") == evil_id
            messages = texts(browser, "#log td.message")
            assert messages[0] == "<script>window.pwned=5</script>"
            assert any(evil_message in m for m in messages)
        if "XssEcho" in url:
            assert text_of(browser, "#response-text") == json.dumps("</pre><script>window.pwned=6</script>")
        if "/tasks?" in url:
            assert sorted(texts(browser, "#task-table td.id")) == [evil_id, evil_id]
    # the live refresh swaps in fresh markup: it must stay inert too
    browser.get(task_url(site.base, "Xss", evil_id))
    browser.execute_script("document.getElementById('live').dataset.refresh = '0.2'")
    browser.execute_script(
        "document.getElementById('auto-refresh').click(); document.getElementById('auto-refresh').click()"
    )
    until(browser, lambda d: "updated" in text_of(d, "#refresh-status"), what="a live refresh")
    assert browser.execute_script("return window.pwned") is None


def test_pages_load_nothing_from_other_origins_and_forbid_inline_scripts(site: Site, browser: Any) -> None:
    for path in ("/", "/tasks", "/tasks?state=FINISHED"):
        browser.get(site.base + path)
        names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert names and all(n.startswith(site.base + "/") for n in names), names
        csp = get(site.base + path).headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_actions_are_refused_without_the_token(site: Site, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    spool = site.spool
    spool.register_type("Act", "testing.raise", timeout=30, maxrestart=0)
    spool.enqueue("Act", "victim", "failing on purpose")
    wait_ended(spool, [("Act", "victim")])

    # read-only dashboard: no form, and a POST is refused even with the right token
    browser.get(task_url(site.base, "Act", "victim"))
    assert not present(browser, "#actions")
    for action in ("delete", "retry"):
        reply = get(task_url(site.base, "Act", "victim", f"/{action}"), data={"token": TOKEN})
        assert reply.status == 403 and "read-only" in reply.text
    # dashboard with actions: refused without the token, with a wrong one, and with a wrong bearer
    for action in ("delete", "retry"):
        url = task_url(site.admin, "Act", "victim", f"/{action}")
        assert get(url, data={}).status == 403
        assert get(url, data={"token": TOKEN + "x"}).status == 403
        assert get(url, data={}, headers={"Authorization": "Bearer nope"}).status == 403
    assert get(task_url(site.admin, "Act", "victim", "/delete")).status == 405  # never by GET
    assert spool.status("Act", "victim") is State.FAILED

    browser.get(task_url(site.admin, "Act", "victim"))
    assert present(browser, "#actions")
    shoot(browser, screenshots, "12-task-actions")
    form = browser.find_element(By.CSS_SELECTOR, "#actions form[action$='/retry']")
    form.find_element(By.NAME, "token").send_keys("not the token")
    form.submit()
    until(browser, lambda d: present(d, "#error"), what="the refusal")
    assert text_of(browser, "#error h1") == "Error 403"
    assert "wrong or missing token" in text_of(browser, "#error .message")
    shoot(browser, screenshots, "13-action-refused")
    assert spool.status("Act", "victim") is State.FAILED

    # with the token: the FAILED task is re-run (keeping its history), and delete works
    reply = get(task_url(site.admin, "Act", "victim", "/retry"), data={"token": TOKEN})
    assert reply.status == 303
    assert any(r.message == "re-run requested from the web dashboard" for r in spool.log("Act", "victim"))
    wait_ended(spool, [("Act", "victim")])
    reply = get(task_url(site.admin, "Act", "victim", "/delete"), data={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200
    with pytest.raises(LookupError):
        spool.status("Act", "victim")
    browser.get(task_url(site.admin, "Act", "victim"))
    assert text_of(browser, "#error h1") == "Error 404"


# --------------------------------------------------------------------------- HTTP tests


def test_make_app_refuses_actions_without_a_token_and_a_missing_spool(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    with pytest.raises(ValueError, match="token"):
        web.make_app(tmp_path / "spool", allow_actions=True)
    with pytest.raises(ValueError, match="token"):
        web.make_app(tmp_path / "spool", allow_actions=True, token="")
    with pytest.raises(FileNotFoundError, match="no spool"):
        web.make_app(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_served_on_loopback_it_refuses_requests_for_other_host_names(site: Site) -> None:
    assert get(site.base + "/", headers={"Host": "attacker.example"}).status == 400
    assert get(site.base + "/", headers={"Host": "localhost:1234"}).status == 200
    reply = get(site.base + "/")
    assert reply.headers["x-frame-options"] == "DENY" and reply.headers["x-content-type-options"] == "nosniff"


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and mtime (directories too)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (
                st.st_mode,
                st.st_size if not os.path.isdir(path) else 0,
                st.st_mtime_ns,
            )
    return out


def test_reading_the_spool_for_every_page_changes_nothing_in_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Read", "testing.echo")
    for n in range(6):
        spool.enqueue("Read", f"r-{n}", n)
    first, second, third, fourth = spool.claim("srv-a", limit=4)
    spool.start(second)
    spool.start(third)
    spool.store_response(third, "hello", "text/plain")
    spool.finish(third)
    spool.fail(fourth, "broken")
    spool.beat("srv-a", {"host": "elsewhere", "workers": 2, "running": [second.key], "state": "running"})
    # a damaged task file: Spool.log would quarantine it; the dashboard must only say so
    (spool.path / "finished" / third.key / "task").write_bytes(b"SPOOLATP-TASK 1 5 0000\ngarbage")
    time.sleep(0.05)
    before = snapshot(spool.path)
    with web_server(spool.path, tmp_path / "web.log") as base:
        urls = ["/", "/tasks", "/tasks?state=RUNNING", "/tasks?type=Read&q=r-", "/tasks?page=9", "/static/app.js"]
        for n in range(6):
            urls += [web.task_url("Read", f"r-{n}"), web.task_url("Read", f"r-{n}", "/response")]
        urls += [web.task_url("Read", "missing"), web.task_url("Nope", "r-1")]
        statuses = {url: get(base + url).status for url in urls}
        page = get(base + web.task_url("Read", third.task_id)).text
    assert statuses["/"] == statuses["/tasks"] == statuses[web.task_url("Read", second.task_id)] == 200
    assert statuses[web.task_url("Read", third.task_id, "/response")] == 200
    assert (
        statuses[web.task_url("Read", "missing")] == statuses[web.task_url("Read", first.task_id, "/response")] == 404
    )
    assert "task file damaged" in page and "hello" in page
    assert snapshot(spool.path) == before


def test_delayed_tasks_are_counted_listed_and_shown_but_the_oldest_waiting_is_one_that_may_start(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Later", "testing.echo", retries=2)
    spool.enqueue("Later", "in-an-hour", 1, not_before=3600)  # the oldest, but not to start yet
    time.sleep(0.01)
    spool.enqueue("Later", "due", 2, not_before=0.2)  # due by the time the page is read; no daemon promotes it
    time.sleep(0.01)
    spool.enqueue("Later", "now", 3)
    [claim] = spool.claim("srv-a")  # "now"; then put back after a failure, for a retry in an hour
    spool.start(claim)
    assert spool.retry_later(claim, "flaky", delay=3600) is State.ENQUEUED
    spool.enqueue("Later", "waiting", 4)
    assert len(os.listdir(spool.path / "delayed")) == 3
    time.sleep(0.3)
    ids = ("in-an-hour", "due", "now", "waiting")
    with web_server(spool.path, tmp_path / "web.log") as base:
        overview = get(base + "/").text
        listed = get(base + "/tasks?state=ENQUEUED").text
        pages = {i: get(base + web.task_url("Later", i)) for i in ids}
    assert 'data-count="ENQUEUED">4<' in overview
    assert listed.count('class="task"') == 4 and 'id="total">4<' in listed
    assert {i: r.status for i, r in pages.items()} == dict.fromkeys(ids, 200)
    assert "flaky" in pages["now"].text  # its log, read from delayed/
    card = re.search(r'id="oldest".*?</div>', overview, re.S)
    assert card is not None and "Later/due" in card.group(0), card


@contextlib.contextmanager
def open_detectors(fifos: list[Path]) -> Iterator[list[str]]:
    """A thread per FIFO, waiting in an open for writing: it returns as soon as anyone opens the FIFO to read.

    Yields the names of the task directories whose FIFO was opened so far; on leaving, each FIFO still waited
    on is opened here, so that every thread ends.
    """
    opened: list[str] = []

    def wait_for_a_reader(fifo: Path) -> None:
        os.close(os.open(fifo, os.O_WRONLY))  # a reader's open ends the wait, O_NONBLOCK (as spoolatp opens) or not
        opened.append(fifo.parent.name)

    threads = [threading.Thread(target=wait_for_a_reader, args=(fifo,)) for fifo in fifos]
    for thread in threads:
        thread.start()
    try:
        yield opened
    finally:
        for fifo, thread in zip(fifos, threads, strict=True):
            if thread.is_alive():
                fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                thread.join(10)
                os.close(fd)


def test_large_spool_pages_open_no_journal_of_a_task_they_do_not_show(tmp_path: Path) -> None:
    """With 100,000 tasks: every journal not on the page is a FIFO, and a few of them tell when they are opened.

    A FIFO reads as empty, never blocking (spoolatp opens it O_NONBLOCK), so a page that opened it would not
    hang; a thread waiting to write to it sees the open, though. Those watched are the tasks next to the page
    and the oldest ones, where a page that read a row too many, or every task, would look first.
    """
    spool = Spool(tmp_path / "spool")
    spool.register_type("Bulk", "testing.echo")
    stamp, shown, old = time.time_ns() - 10**12, 50, time.time() - 7200
    watched = [*range(5), BULK // 2, *range(BULK - shown - 5, BULK - shown)]
    fifos = []
    for n in range(BULK):
        path = spool.path / "finished" / make_key("Bulk", f"t{n:06d}", stamp + n * 1000)
        os.mkdir(path)
        if n >= BULK - shown:  # format 2: the journal lines follow the record in the task file
            line = json.dumps({"t": time.time(), "s": 5, "m": "finished", "srv": "bulk", "att": 1}) + "\n"
            (path / "task").write_bytes(seal(TASK_MAGIC, b"record") + line.encode())
        else:
            os.mkfifo(path / "task")
            os.utime(path / "task", (old, old))  # ended two hours ago: outside the throughput chart
            if n in watched:
                fifos.append(path / "task")
    with open_detectors(fifos) as opened, web_server(spool.path, tmp_path / "web.log") as base:
        took = {}
        for url in ("/", "/", "/tasks", "/tasks?state=FINISHED", "/tasks?type=Bulk", f"/tasks?q=t{BULK - 1:06d}"):
            start = time.monotonic()
            reply = get(base + url)
            took[url] = round(time.monotonic() - start, 3)
            assert reply.status == 200, (url, reply.status)
            if url.startswith("/tasks?q="):
                assert reply.text.count('class="task"') == 1
            elif url.startswith("/tasks"):
                assert f'id="total">{BULK}<' in reply.text and reply.text.count('class="task"') == shown
            else:
                assert f'data-count="FINISHED">{BULK}<' in reply.text
                assert 'id="finished-hour">50<' in reply.text  # only the 50 real journals are recent
        time.sleep(0.5)  # a thread whose FIFO was opened has said so by now
        assert opened == [], f"pages opened the task files of tasks they do not show: {opened}"
    print(f"seconds per request with {BULK} tasks: {took}")
