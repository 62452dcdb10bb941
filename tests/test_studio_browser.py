"""The studio in a real browser, as a person uses it: Debian's Chromium driven by
Playwright's Python API, over the quickstart after an apply (and a second one that
trains again with another C). Every page loads with no console error; the runs table
filters and sorts; a comparison draws two curves; the lineage graph links to its run;
the plan page shows the changes `mlinfra plan` prints. Each page is saved as a
screenshot (in MLINFRA_STUDIO_SCREENSHOTS, else a temporary folder) to be looked at.

Where Chromium or Playwright is missing these tests are skipped, saying why; under
CI=true they fail (`.ci/run` installs Chromium)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QUICKSTART, missing

MLINFRA = str(Path(sys.executable).parent / "mlinfra")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


def _chromium() -> str:
    found = os.environ.get("MLINFRA_CHROMIUM") or shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    reason = ""
    if found is None:
        reason = "Chromium is not installed (apt-get install chromium; .ci/run does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright is not installed (pip install playwright)"
    if reason:
        missing(reason)
    assert found is not None
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mlinfra(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLINFRA, *args, "-C", str(root)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


class Studio:
    """The quickstart, applied twice, and `mlinfra studio` serving it."""

    def __init__(self, root: Path, env: dict[str, str], url: str, shots: Path) -> None:
        self.root, self.env, self.url, self.shots = root, env, url, shots

    def mlinfra(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _mlinfra(self.root, self.env, *args)

    def train_runs(self) -> list[str]:
        listed = self.mlinfra("runs", "list").stdout.splitlines()[1:]
        return [line.split()[0] for line in listed if line.split()[0].startswith("train-")]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    _chromium()
    root = tmp_path_factory.mktemp("studio") / "quickstart"
    shutil.copytree(QUICKSTART, root, ignore=shutil.ignore_patterns(".mlinfra"))
    env = {**os.environ, "MLINFRA_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache"),
           "COLUMNS": "200"}
    first = _mlinfra(root, env, "apply", "--auto-approve")
    assert first.returncode == 0, first.stdout + first.stderr
    training = root / "training.yaml"
    training.write_text(training.read_text().replace("params: {C: 1.0}", "params: {C: 0.05}"))
    second = _mlinfra(root, env, "apply", "--auto-approve")
    for _ in range(3):
        _mlinfra(root, env, "endpoints", "invoke", "fraud-api", "--data",
                 str(root / "sample-request.json"))
    port = _free_port()
    shots = Path(os.environ.get("MLINFRA_STUDIO_SCREENSHOTS")
                 or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    log = open(root.parent / "studio.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([MLINFRA, "studio", "-C", str(root), "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/static/studio.css", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("the studio did not start: " + (
                        root.parent / "studio.log").read_text()) from None
                time.sleep(0.2)
        assert second.returncode in (0, 1), second.stdout + second.stderr
        yield Studio(root, env, url, shots)
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
        _mlinfra(root, env, "destroy", "--auto-approve")


@pytest.fixture(scope="module")
def browser(studio: Studio) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=_chromium(),
                                              args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """A browser tab that records console errors and failed requests."""

    def __init__(self, browser: Any, studio: Studio) -> None:
        self.studio = studio
        self.tab = browser.new_page(viewport={"width": 1360, "height": 900})
        self.errors: list[str] = []
        self.tab.on("console", lambda m: self.errors.append(f"console: {m.text}")
                    if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.tab.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))

    def open(self, path: str) -> Any:
        answer = self.tab.goto(self.studio.url + path)
        assert answer is not None and answer.status == 200, path
        self.tab.wait_for_load_state("networkidle")
        return self.tab

    def shot(self, name: str) -> None:
        self.tab.screenshot(path=str(self.studio.shots / f"{name}.png"), full_page=True)


@pytest.fixture
def page(browser: Any, studio: Studio) -> Iterator[Page]:
    opened = Page(browser, studio)
    yield opened
    opened.tab.close()
    assert opened.errors == []


def test_every_page_loads_without_a_console_error(page: Page, studio: Studio) -> None:
    train = studio.train_runs()
    assert len(train) == 2
    pages = {"overview": "/", "plan": "/plan", "runs": "/runs", "run": f"/runs/{train[0]}",
             "code": f"/runs/{train[0]}/code?path=train.py",
             "compare": f"/compare?run={train[0]}&run={train[1]}", "models": "/models",
             "model": "/models/fraud/1", "data": "/data", "endpoints": "/endpoints",
             "monitors": "/monitors", "events": "/events"}
    for name, path in pages.items():
        tab = page.open(path)
        if name in ("run", "compare"):
            tab.wait_for_selector("figure.chart .uplot canvas")
        if name == "run":
            assert tab.locator("#packages tr").count() > 5  # scikit-learn, skl2onnx, ...
        if name in ("plan", "model"):
            tab.wait_for_selector("div.graph svg g.node")
        if name == "overview":
            tab.wait_for_selector("#drift p, #drift table")
        if name == "endpoints":
            tab.wait_for_selector("table.live-table")
            assert "blue" in tab.inner_text("table.live-table")
        if name == "models":  # the bootstrap interval scores both versions: wait for it
            tab.wait_for_function("!document.body.innerText.includes('Scoring both')",
                                  timeout=120_000)
            assert "95% interval (bootstrap)" in tab.inner_text("table.interval-table")
        if name == "model":
            assert tab.locator("svg a[data-node='endpoint:fraud-api']").count() == 1
            assert tab.locator("svg a[data-node='data:transactions-holdout:1']").count() == 1
        if name == "data":
            assert "passed 3/3" in tab.inner_text("#transactions")
        page.shot(name)
        assert page.errors == [], (path, page.errors)
        assert tab.title().endswith("mlinfra studio")


def test_the_runs_table_filters_and_sorts(page: Page, studio: Studio) -> None:
    tab = page.open("/runs")
    total = tab.inner_text("#runs-count").split(" of ")[0]
    assert f"{total} of {total} runs" in tab.inner_text("#runs-count")
    tab.fill("input[name=q]", "metrics.val_auc > 0")
    tab.press("input[name=q]", "Enter")
    tab.wait_for_function("document.querySelector('#runs-count').innerText"
                          ".startsWith('2 of')")
    assert "q=metrics.val_auc" in tab.url
    ids = tab.eval_on_selector_all("tbody tr[data-run]", "rows => rows.map(r => r.dataset.run)")
    assert sorted(ids) == sorted(studio.train_runs())
    tab.click("a.sort[data-field='metrics.val_auc']")
    tab.wait_for_selector("a.sort.sorted-desc[data-field='metrics.val_auc']")
    column = tab.eval_on_selector_all(
        "thead th", "cells => cells.findIndex("
        "c => c.querySelector(\"a[data-field='metrics.val_auc']\"))")
    assert column > 0
    values = [float(v) for v in tab.eval_on_selector_all(
        f"tbody tr td:nth-child({column + 1})", "cells => cells.map(c => c.innerText)")]
    assert values == sorted(values, reverse=True) and len(values) == 2
    tab.click("a.sort[data-field='metrics.val_auc']")
    tab.wait_for_selector("a.sort.sorted-asc[data-field='metrics.val_auc']")
    again = [float(v) for v in tab.eval_on_selector_all(
        f"tbody tr td:nth-child({column + 1})", "cells => cells.map(c => c.innerText)")]
    assert again == sorted(values)
    tab.fill("input[name=q]", "metrics.val_auc >")
    tab.press("input[name=q]", "Enter")
    tab.wait_for_selector("#filter-error")
    assert "column 18" in tab.inner_text("#filter-error")
    page.shot("runs-filtered")


def test_a_comparison_draws_two_curves(page: Page, studio: Studio) -> None:
    tab = page.open("/runs")
    for run in studio.train_runs():
        tab.check(f"input[type=checkbox][value='{run}']")
    tab.click("text=Compare chosen runs")
    tab.wait_for_url("**/compare?**")
    tab.wait_for_selector("figure.chart[data-key='val_auc'][data-series='2'] canvas")
    legend = tab.inner_text("figure.chart[data-key='val_auc'] .u-legend")
    for run in studio.train_runs():
        assert run in legend
    assert "differs" in (tab.get_attribute("#compare-table tr:has(th:text('param C'))",
                                           "class") or "")
    page.shot("compare")


def test_the_lineage_graph_links_to_its_run(page: Page, studio: Studio) -> None:
    tab = page.open("/models/fraud/1")
    run = tab.inner_text("#model-run")
    tab.wait_for_selector(f"svg a[data-node='run:{run}']")
    tab.click(f"svg a[data-node='run:{run}']")
    tab.wait_for_url(f"**/runs/{run}")
    assert run in tab.inner_text("h1")


def test_the_plan_page_shows_the_changes_of_mlinfra_plan(page: Page, studio: Studio) -> None:
    training = studio.root / "training.yaml"
    before = training.read_text()
    training.write_text(before.replace("params: {C: 0.05}", "params: {C: 3.0}"))
    try:
        planned = studio.mlinfra("plan")
        assert planned.returncode == 0, planned.stderr
        tab = page.open("/plan")
        tab.wait_for_selector("div.graph svg g.node")
        shown = tab.inner_text("#plan-text").strip().splitlines()
        assert shown == planned.stdout.strip().splitlines()
        changed = {line.split()[1] for line in planned.stdout.splitlines()
                   if line.startswith("  # ") and " will " in line}
        marked = set(tab.eval_on_selector_all(
            "svg g.node:not(.action-noop)", "nodes => nodes.map(n => n.dataset.node)"))
        assert changed and marked == changed
        page.shot("plan-changes")
    finally:
        training.write_text(before)
