"""The documentation site builds strict and works in a real browser: `mkdocs build --strict` into tmp_path, served on
127.0.0.1 by http.server, driven in headless Chromium (Debian's package) over the DevTools protocol on a pipe
(--remote-debugging-pipe: no extra Python package). Pages render (API entries for every name of ``ei_toolkit.__all__``,
math typeset by the locally served MathJax with no TeX error), every nav link answers, clicking one navigates,
search finds pages, and no request leaves 127.0.0.1. Screenshots of the home page, an API page, math.md and a search
land in the test's tmp_path (look at them: pytest --basetemp=DIR).

Without mkdocs (the docs extra) or Chromium: with CI=true the test fails, saying what to install (.ci/run installs
both); elsewhere it is skipped with that message (pytest -ra prints it), so `bash scripts/test.sh` on a machine
without Chromium still passes.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import importlib.util
import inspect
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import ei_toolkit

ROOT = Path(__file__).resolve().parents[1]
H1 = "document.querySelector('h1').textContent.replace('\u00b6', '').trim()"  # without the permalink sign
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900", "--hide-scrollbars", "--mute-audio"]


def missing(what: str, how: str) -> None:
    message = f"{what} is not installed: {how} (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    missing("Chromium", "apt-get install -y chromium")
    raise AssertionError  # unreachable


class Browser:
    """Headless Chromium over the DevTools protocol on a pipe: JSON messages ending in NUL, on fds 3 (to it) and 4."""

    def __init__(self, exe: str, profile: Path, log: Path):
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()

        def child_fds() -> None:  # fds 3 / 4 in the child, whatever numbers the pipes have here
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = log.open("wb")
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                      "about:blank"], stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     close_fds=False, preexec_fn=child_fds)
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.poll()}); its log: {self._log.name}")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if value := self.js(expression):
                    return value
            except RuntimeError as e:  # a navigation replaced the page under the evaluation: ask the new one
                if "context" not in str(e).lower():
                    raise
            time.sleep(0.1)
        raise AssertionError(f"not true within {timeout} s: {expression}")

    def wait_event(self, method: str, since: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event.get("method") == method:
                    return event
            since = len(self.events)
            self.events.append(self._read(deadline))

    def goto(self, url: str) -> None:
        mark = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired", mark)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))
        return path

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def failures(self) -> list[str]:
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"}
        bad = [f"{urls.get(e['params']['requestId'])}: {e['params'].get('errorText')}" for e in self.events
               if e.get("method") == "Network.loadingFailed" and not e["params"].get("canceled")]
        bad += [f"{e['params']['response']['url']}: HTTP {e['params']['response']['status']}" for e in self.events
                if e.get("method") == "Network.responseReceived" and e["params"]["response"]["status"] >= 400]
        return bad

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone: the process is reaped below either way
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to)
        os.close(self._from)
        self._log.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        missing("mkdocs (the docs extra)", "pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-6000:]}"
    print(f"site built in {time.monotonic() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def load_hooks():
    if importlib.util.find_spec("mkdocs") is None:
        missing("mkdocs (the docs extra)", "pip install -e '.[docs]'")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_repository_links_resolve_in_the_site():
    """Pages link as in the repository; docs/hooks.py rewrites each link to the file's place in the site."""
    hooks = load_hooks()

    def render(src_uri: str, markdown: str) -> str:
        page = type("Page", (), {"file": type("File", (), {"src_uri": src_uri})()})()
        return hooks.on_page_markdown(markdown, page, None, None)

    assert render("integrators.md", "[a](../benchmarks/results/accuracy.md#x) [b](sde.md) [c](https://e.org/a.md)") \
        == "[a](benchmarks/results/accuracy.md#x) [b](sde.md) [c](https://e.org/a.md)"
    assert render("index.md", "[m](docs/math.md) [s](docs/sde.md#the-derivation-cache) [r](benchmarks/results/)") \
        == "[m](math.md) [s](sde.md#the-derivation-cache) [r](benchmarks/results/index.md)"
    assert render("math.md", "see `benchmarks/results/ems.md` and `benchmarks/results/none.md`") \
        == "see [`benchmarks/results/ems.md`](benchmarks/results/ems.md) and `benchmarks/results/none.md`"
    assert render("math.md", "```text\n[a](../benchmarks/results/ems.md)\n```\n") == \
        "```text\n[a](../benchmarks/results/ems.md)\n```\n"  # code blocks stay as written
    assert render("benchmarks/results/accuracy.md", "[d](default.md)").startswith("[d](default.md)")
    assert "![digits_samples](digits_samples.png)" in render("benchmarks/results/digits.md", "# Digits")


def test_the_site_builds_strict_with_every_public_name(site):
    api = (site / "api" / "ei_toolkit" / "index.html").read_text()
    # submodules have pages of their own (or their names are on this one); a function that shares its module's name
    # (ei_toolkit.generate) is rendered under the module's path
    names = [n for n in ei_toolkit.__all__ if not inspect.ismodule(getattr(ei_toolkit, n))]
    absent = [n for n in names if f'id="ei_toolkit.{n}"' not in api and f'id="ei_toolkit.{n}.{n}"' not in api]
    assert not absent, f"no API entry for {absent}"
    modules = [f"ei_toolkit.{n}" for n in ei_toolkit.__all__ if inspect.ismodule(getattr(ei_toolkit, n))]
    for page in (*modules, "ei_toolkit.testing", "ei_toolkit.inversion", "ei_toolkit.diffusion.scheduler"):
        assert (site / "api" / page / "index.html").is_file(), f"no API page for {page}: add a line to the nav"
        assert f'id="{page}"' in (site / "api" / page / "index.html").read_text(), page
    assert 'id="ei_toolkit.diffusion.scheduler.EIScheduler"' in (
        site / "api" / "ei_toolkit.diffusion.scheduler" / "index.html").read_text()
    for png in (ROOT / "benchmarks" / "results").glob("*.png"):
        assert (site / "benchmarks" / "results" / png.name).read_bytes() == png.read_bytes()
    assert not list(site.rglob("*.py")) and not list(site.rglob("*.pyc"))
    index = json.loads((site / "search" / "search_index.json").read_text())
    assert len(index["docs"]) > 100 and any(d["location"].startswith("math/") for d in index["docs"])
    html = "".join(p.read_text() for p in site.rglob("*.html"))
    assert ":func:`" not in html and ":class:`" not in html, "a Sphinx role reached the page unconverted"
    assert not re.search(r"https?://(cdn|unpkg|fonts\.googleapis|cdnjs)", html), "a page loads from a CDN"


def test_the_site_works_in_chromium(chromium, server, tmp_path):
    browser = Browser(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    shots = []
    try:
        # home page: the README, with the nav
        browser.goto(f"{server}/")
        assert browser.js(H1) == "ei_toolkit"
        nav = browser.js("[...document.querySelectorAll('nav.md-nav--primary a.md-nav__link[href]')]"
                         ".map(a => a.href)")
        nav = sorted({u.split("#")[0] for u in nav if u.startswith(server)})
        assert len(nav) >= 30, nav
        for url in nav:
            with urllib.request.urlopen(url, timeout=10) as r:
                assert r.status == 200 and b"<h1" in r.read(), url
        shots.append(browser.screenshot(tmp_path / "index.png"))

        # navigation by clicking: the guide on the mathematics, its formulas typeset
        mark = len(browser.events)
        browser.js("document.querySelector(\"nav.md-nav--primary a.md-nav__link[href$='math/']\").click()")
        browser.wait_event("Page.loadEventFired", mark)
        assert browser.js("location.pathname").endswith("/math/")
        assert browser.js(H1).startswith("The mathematics")
        n_math = browser.js("document.querySelectorAll('.arithmatex').length")
        assert n_math > 200
        browser.wait_for(f"document.querySelectorAll('.arithmatex mjx-container').length === {n_math}", timeout=60)
        assert browser.js("document.querySelectorAll('mjx-merror, [data-mjx-error]').length") == 0, "a TeX error"
        shots.append(browser.screenshot(tmp_path / "math.png"))

        # an API page: headings and signatures of the package's names
        browser.goto(f"{server}/api/ei_toolkit/")
        assert browser.js("!!document.getElementById('ei_toolkit.sample')")
        browser.js("document.getElementById('ei_toolkit.solve').scrollIntoView()")
        shots.append(browser.screenshot(tmp_path / "api.png"))

        # search: type into the search box, results list pages
        browser.goto(f"{server}/")
        browser.js("document.querySelector('input.md-search__input').focus()")
        browser.call("Input.insertText", session=True, text="exponential")
        count = browser.wait_for("document.querySelectorAll('.md-search-result__item').length", timeout=30)
        assert count > 3, count
        meta = browser.js("document.querySelector('.md-search-result__meta').textContent")
        assert re.search(r"\d+ matching", meta), meta
        shots.append(browser.screenshot(tmp_path / "search.png"))

        foreign = [u for u in browser.requests() if not u.startswith((server, "data:", "blob:", "about:"))]
        assert not foreign, f"requests outside the served site: {foreign}"
        assert not browser.failures(), browser.failures()
    finally:
        browser.close()
    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{shot} looks empty"
    print("screenshots:", *shots)
