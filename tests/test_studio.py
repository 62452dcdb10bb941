"""The studio over a real state, through Starlette's test client: every page, the runs
table's filters, sorts and pages, charts downsampled on the server, the live log, the
code browser, the plan as `mlinfra plan` shows it, endpoint metrics, and what keeps it
read-only and private (token, hosts, headers, no secret shown)."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mlinfra.engine import open_session
from mlinfra.registry.decisions import PROMOTION, DecisionLog
from mlinfra.runs.store import Run, RunStore
from mlinfra.studio import charts, filters
from mlinfra.studio.app import create_app
from mlinfra.studio.context import Studio, StudioOptions, redact
from mlinfra.studio.endpoint_metrics import histogram_quantile, parse
from mlinfra.studio.runs_index import RunIndex
from mlinfra.studio.security import StudioRefused, required_token
from tests.conftest import Result, onnx_model
from tests.postgres import PASSWORD, PostgresServer

BASE_URL = "http://127.0.0.1"
TOKEN = "a-token-of-some-length"


def _write_runs(root: Path, count: int = 30, stack: str | None = None) -> list[str]:
    """Runs of job train with params lr and depth, a metric auc logged over steps (the
    last value i / count), a log, a code snapshot and a remote URL holding a password."""
    session = open_session(root, stack, "test", write=True)
    store = RunStore(session.store)
    ids = []
    try:
        for i in range(count):
            run_dir = root / ".mlinfra" / "runs" / f"r{i}"
            run_dir.mkdir(parents=True)
            (run_dir / "output.log").write_text(f"epoch 1\nrun {i} done\n")
            with zipfile.ZipFile(run_dir / "snapshot.zip", "w") as zf:
                zf.writestr("train.py", f"print('run {i}')\n")
                zf.writestr("lib/util.py", "X = 1\n")
            run = Run(id=f"train-{i:04d}", job="train" if i % 3 else "prep", experiment="e",
                      run_hash=f"h{i}", status="failed" if i == 7 else "completed",
                      created_at=1_700_000_000 + i, started_at=1_700_000_000 + i,
                      ended_at=1_700_000_010 + i, params={"lr": i / 100, "depth": i % 5},
                      git={"commit": f"{i:040x}", "branch": "main",
                           "remote": "https://bob:hunter2secret@git.example.com/x.git"},
                      environment={"venv": None, "API_TOKEN": "tok-should-not-show"},
                      run_dir=str(run_dir), inputs={"data": "table:1", "clean": (
                          f"step prep output clean (run train-{max(i - 1, 0):04d})")},
                      outputs={"model": hashlib.sha256(onnx_model()).hexdigest()})
            store.save(run)
            store.add_metrics(run.id, [
                {"type": "metric", "key": "auc", "value": (i / count) * s / 4, "step": s}
                for s in range(1, 5)] + [{"type": "param", "key": "seed", "value": 42}])
            ids.append(run.id)
    finally:
        session.close()
    return ids


@pytest.fixture
def studio_project(project: Callable[..., Path], cli: Callable[..., Result]) -> Path:
    root = project({"models/m.onnx": onnx_model(),
                    "model.yaml": "kind: Model\nname: m\nfrom: {path: models/m.onnx}\n",
                    "data/table.csv": "a,b\n1,2\n3,4\n",
                    "data.yaml": "kind: Data\nname: table\npath: table.csv\nformat: csv\n"})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    _write_runs(root)
    return root


@pytest.fixture
def client(studio_project: Path) -> Iterator[TestClient]:
    studio = Studio(StudioOptions(directory=studio_project))
    with TestClient(create_app(studio), base_url=BASE_URL) as test_client:
        yield test_client


# --- the filter language --------------------------------------------------------------

def test_filters_read_conditions_on_metrics_params_and_columns() -> None:
    row = {"metrics.auc": 0.91, "params.C": 1.0, "status": "completed", "params.max-depth": 4,
           "job": "train"}.get
    for text, expected in [("metrics.auc > 0.8", True), ("metrics.auc > 0.95", False),
                           ("metrics.auc > 0.8 and params.C = 1", True),
                           ("status = completed and job == 'train'", True),
                           ("status != completed or metrics.auc >= 0.9", True),
                           ("not status = completed", False),
                           ('params["max-depth"] >= 4', True),
                           ("0.5 < metrics.auc <= 0.91", False),
                           ("metrics.missing > 0", False)]:
        if text.startswith("0.5"):
            with pytest.raises(filters.FilterError):
                filters.parse(text)
            continue
        predicate, _ = filters.parse(text)
        assert predicate is not None and predicate(row) is expected, text


@pytest.mark.parametrize(("text", "message"), [
    ("metrics.auc >", "filter, column 14: cannot read it"),
    ("metrics.auc > 0.8 and bogus = 1", "filter, column 23: unknown field 'bogus'"),
    ("metrics.auc = 1 and metrics.auc ~ 2", "filter, column"),
    ("metrics > 1", "filter, column 1: name a metric: metrics.NAME"),
    ("metrics.auc > os.system", "filter, column 15: expected a number"),
    ("__import__('os')", "filter, column 1: expected a comparison"),
])
def test_a_filter_it_cannot_read_names_the_column(text: str, message: str) -> None:
    with pytest.raises(filters.FilterError) as err:
        filters.parse(text)
    assert message in err.value.message


# --- the runs table ---------------------------------------------------------------------

def test_runs_index_filters_sorts_pages_and_follows_new_points(studio_project: Path) -> None:
    session = open_session(studio_project, None, "test", write=False)
    try:
        index = RunIndex(session.store)
        page = index.page("metrics.auc >= 0.5 and job = train", "metrics.auc", True, 0, 5)
        assert page.total == 30
        # auc = i / 30 >= 0.5: i in 15..29, of which i % 3 != 0 are train: 10 runs.
        assert page.matched == 10
        assert [r.id for r in page.rows] == ["train-0029", "train-0028", "train-0026",
                                             "train-0025", "train-0023"]
        assert page.rows[0].params == {"lr": 0.29, "depth": 4, "seed": 42}
        assert page.metric_keys == ["auc"] and page.param_keys == ["depth", "lr", "seed"]
        ascending = index.page("", "params.lr", False, 10, 3)
        assert [r.id for r in ascending.rows] == ["train-0010", "train-0011", "train-0012"]
        assert [r.id for r in index.page("status = failed").rows] == ["train-0007"]
        assert index.page("commit = " + repr(f"{3:040x}")).rows[0].id == "train-0003"
        writer = open_session(studio_project, None, "test", write=True)
        try:
            runs = RunStore(writer.store)
            runs.add_metrics("train-0001", [{"type": "metric", "key": "auc", "value": 0.99,
                                             "step": 5}])
            runs.save(Run(id="train-new", job="train", experiment="e", run_hash="n",
                          status="running", created_at=time.time(), params={"lr": 0.5}))
        finally:
            writer.close()
        top = index.page("", "metrics.auc", True, 0, 1).rows[0]
        assert (top.id, top.metrics["auc"]) == ("train-0001", 0.99)
        assert index.page("status = running").rows[0].id == "train-new"
    finally:
        session.close()


def test_the_runs_page_filters_sorts_and_pages_on_the_server(client: TestClient) -> None:
    page = client.get("/runs", params={"q": "metrics.auc > 0.9", "sort": "metrics.auc",
                                       "order": "asc"})
    assert page.status_code == 200
    assert "2 of 30 runs" in page.text
    assert page.text.index("train-0028") < page.text.index("train-0029")
    assert "train-0010" not in page.text
    fragment = client.get("/runs", params={"q": "params.depth = 4"},
                          headers={"HX-Request": "true", "HX-Target": "runs-table"})
    assert fragment.text.lstrip().startswith('<div id="runs-table">')
    assert "6 of 30 runs" in fragment.text and "<html" not in fragment.text
    wrong = client.get("/runs", params={"q": "metrics.auc >"})
    assert wrong.status_code == 200 and "filter, column 14: cannot read it" in wrong.text
    assert "30 of 30 runs" in wrong.text


def test_the_runs_page_pages_by_a_hundred(studio_project: Path) -> None:
    session = open_session(studio_project, None, "test", write=True)
    try:
        runs = RunStore(session.store)
        for i in range(150):
            runs.save(Run(id=f"bulk-{i:03d}", job="bulk", experiment="e", run_hash="b",
                          status="completed", created_at=1_600_000_000 + i))
    finally:
        session.close()
    studio = Studio(StudioOptions(directory=studio_project))
    with TestClient(create_app(studio), base_url=BASE_URL) as test_client:
        first = test_client.get("/runs", params={"q": "job = bulk"})
        assert "150 of 180 runs, 1\u2013100 shown" in first.text and 'id="next-page"' in first.text
        second = test_client.get("/runs", params={"q": "job = bulk", "offset": "100"})
        assert "101\u2013150 shown" in second.text and 'id="next-page"' not in second.text
        assert "bulk-049" in second.text and "bulk-050" not in second.text


# --- a run ----------------------------------------------------------------------------

def test_a_run_page_shows_params_metrics_log_code_inputs_and_outputs(client: TestClient
                                                                     ) -> None:
    page = client.get("/runs/train-0004")
    assert page.status_code == 200
    for text in ("train-0004", "lr", "0.04", "seed", 'data-key="auc"', "table:1",
                 'href="/data#table"', "train.py", "lib/util.py", f"{4:040x}",
                 'href="/runs/train-0003">step prep output clean (run train-0003)',
                 'href="/models/m/1">model m:1'):
        assert text in page.text, text
    assert "hunter2secret" not in page.text and "tok-should-not-show" not in page.text
    code = client.get("/runs/train-0004/code", params={"path": "train.py"})
    assert "print(&#39;run 4&#39;)" in code.text
    assert client.get("/runs/train-0004/code", params={"path": "../x"}).status_code == 404
    assert client.get("/runs/nope").status_code == 404


def test_the_log_is_sent_in_pieces_that_follow_a_running_run(studio_project: Path,
                                                             client: TestClient) -> None:
    first = client.get("/runs/train-0002/log", params={"offset": "0"})
    assert "run 2 done" in first.text and "hx-get" not in first.text  # completed: no more
    session = open_session(studio_project, None, "test", write=True)
    try:
        runs = RunStore(session.store)
        run = runs.get("train-0002")
        assert run is not None
        run.status = "running"
        runs.save(run)
    finally:
        session.close()
    log = Path(run.run_dir) / "output.log"
    size = log.stat().st_size
    following = client.get("/runs/train-0002/log", params={"offset": str(size)})
    assert f"offset={size}" in following.text and 'hx-trigger="load delay:1s"' in following.text
    with open(log, "a") as f:
        f.write("epoch 2 — ünïcode\n")
    more = client.get("/runs/train-0002/log", params={"offset": str(size)})
    assert more.text.startswith("epoch 2 — ünïcode\n")
    assert f"offset={log.stat().st_size}" in more.text


def test_chart_data_is_downsampled_on_the_server_by_lttb(client: TestClient) -> None:
    data = client.get("/api/runs/train-0010/metrics/auc").json()
    assert data["x"] == [1, 2, 3, 4] and data["total"] == 4 and data["x_label"] == "step"
    assert data["y"][-1] == pytest.approx(10 / 30)
    rows = [(step, 1.0 if step == 5_000 else 0.0) for step in range(100_000)]
    small = charts.downsample(rows, 500)
    assert len(small["x"]) == 500 and small["total"] == 100_000
    assert 1.0 in small["y"]  # the spike a stride would drop is kept
    assert small["x"][0] == 0 and small["x"][-1] == 99_999
    twice = charts.downsample([(1, 0.1), (2, 0.2), (2, 0.3)])
    assert (twice["x"], twice["y"]) == ([1.0, 2.0], [0.1, 0.3])
    unstepped = charts.downsample([(None, 3.0), (None, 4.0)])
    assert unstepped["x"] == [0.0, 1.0] and unstepped["x_label"] == "point"


def test_compare_puts_params_side_by_side_and_marks_what_differs(client: TestClient) -> None:
    page = client.get("/compare", params=[("run", "train-0001"), ("run", "train-0002")])
    assert page.status_code == 200
    assert 'data-runs="train-0001,train-0002" data-key="auc"' in page.text
    rows = page.text.split("<tr")
    lr = next(r for r in rows if "param lr" in r)
    seed = next(r for r in rows if "param seed" in r)
    assert 'class="differs"' in lr and 'class="differs"' not in seed


# --- models, data, overview, endpoints -------------------------------------------------

def test_models_page_shows_versions_decisions_and_lineage(studio_project: Path,
                                                         client: TestClient) -> None:
    session = open_session(studio_project, None, "test", write=True)
    try:
        DecisionLog(session.store).record("promotion.m", PROMOTION, {
            "model": "m", "alias": "champion", "candidate": 1, "champion": None, "from": None,
            "to": 1, "outcome": "promoted", "reason": "m:1 passed the gates",
            "metrics": {"candidate": {"auc": 0.9}, "champion": {}},
            "gates": [{"gate": "auc >= 0.8", "passed": True}],
            "rollout": {"endpoint": "api", "status": "complete", "why": "ok", "steps": [
                {"share": 10, "verdict": "pass", "requests": 120, "error_rate": 0.0,
                 "p99_ms": 4.0}]}})
    finally:
        session.close()
    models = client.get("/models")
    assert models.status_code == 200
    for text in ("m:1", "PROMOTED", "m:1 passed the gates", "passed: auc &gt;= 0.8",
                 "No champion to compare with"):
        assert text in models.text, text
    version = client.get("/models/m/1")
    assert version.status_code == 200 and 'id="lineage-graph-data"' in version.text
    graph = json.loads(version.text.split('id="lineage-graph-data">')[1].split("</script>")[0])
    assert graph["nodes"][0]["href"] == "/models/m/1"
    assert client.get("/models/m/9").status_code == 404
    from mlinfra.studio.endpoint_pages import rollouts

    timeline = rollouts(Studio(StudioOptions(directory=studio_project)).store, "api")
    assert [(r["status"], r["steps"][0]["verdict"]) for r in timeline] == [("complete", "pass")]


def test_data_overview_and_endpoints_pages(client: TestClient) -> None:
    data = client.get("/data")
    assert data.status_code == 200 and "table:1" in data.text and ">2<" in data.text
    overview = client.get("/")
    assert overview.status_code == 200
    for text in ("model.m", "data.table", "workspace.ws", "apply", 'hx-get="/overview/drift"'):
        assert text in overview.text, text
    drift = client.get("/overview/drift")
    assert "No drift" in drift.text
    endpoints = client.get("/endpoints")
    assert endpoints.status_code == 200 and "No endpoint applied yet" in endpoints.text


def test_endpoint_metrics_are_read_as_prometheus_does() -> None:
    from mlinfra.serving.metrics import Metrics

    metrics = Metrics()
    for ms in range(1, 101):
        metrics.observe("blue", 200, ms / 1000)
    metrics.observe("blue", 500, 0.002)
    metrics.observe("green", 422, 0.001)
    stats = parse(metrics.render("api"))
    assert stats["blue"].requests == 101 and stats["blue"].errors == 1
    assert stats["green"].rejected == 1 and stats["green"].errors == 0
    p50 = stats["blue"].percentile(0.5)
    assert p50 is not None and 0.025 <= p50 <= 0.1
    assert histogram_quantile(0.5, [(0.1, 5.0), (0.2, 10.0), (float("inf"), 10.0)]) == 0.1
    assert histogram_quantile(0.75, [(0.1, 5.0), (0.2, 10.0)]) == pytest.approx(0.15)
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 4.0)]) == 0.1
    assert histogram_quantile(0.5, []) is None


# --- the plan -------------------------------------------------------------------------

def test_the_plan_page_shows_what_mlinfra_plan_shows(studio_project: Path,
                                                    cli: Callable[..., Result],
                                                    client: TestClient) -> None:
    (studio_project / "data" / "table.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    (studio_project / "x").mkdir()
    (studio_project / "extra.yaml").write_text("kind: Datastore\nname: extra\npath: ./x\n")
    planned = cli("plan")
    assert planned.code == 0
    page = client.get("/plan")
    assert page.status_code == 200
    for line in planned.out.splitlines():
        if line.startswith("  # ") or line.startswith("Plan:"):
            assert line.replace(">", "&gt;").replace('"', "&#34;") in page.text, line
    graph = json.loads(page.text.split('id="plan-graph-data">')[1].split("</script>")[0])
    actions = {n["id"]: n["symbol"] for n in graph["nodes"]}
    assert actions["datastore.extra"] == "+" and actions["data.table"] == "~"
    assert actions["workspace.ws"] == "="
    # A transitive reduction: no edge is also a longer path.
    after: dict[str, set[str]] = {}
    for edge in graph["edges"]:
        after.setdefault(edge["from"], set()).add(edge["to"])

    def reachable(start: str, skip: tuple[str, str]) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in after.get(todo.pop(), set()):
                if nxt not in seen and (start, nxt) != skip:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert graph["edges"]
    for edge in graph["edges"]:
        assert edge["to"] not in reachable(edge["from"], (edge["from"], edge["to"])), edge
    saved = cli("plan", "--out", "saved.plan")
    assert saved.code == 0
    opened = client.get("/plan", params={"file": "saved.plan"})
    assert "Plan: 1 to add, 1 to change" in opened.text and "stale" not in opened.text
    assert cli("apply", "--auto-approve", "--target", "datastore.extra").code == 0
    stale = client.get("/plan", params={"file": "saved.plan"})
    assert "This saved plan is stale" in stale.text and "apply would refuse it" in stale.text
    outside = client.get("/plan", params={"file": "../../etc/passwd"})
    assert "inside the project folder" in outside.text
    bad = client.get("/plan", params={"file": "data/table.csv"})
    assert "is not a plan file saved by mlinfra plan --out" in bad.text


def test_a_broken_project_shows_its_errors_on_the_plan_page(studio_project: Path,
                                                           client: TestClient) -> None:
    (studio_project / "broken.yaml").write_text("kind: Datastore\nname: Bad_Name\n")
    page = client.get("/plan")
    assert page.status_code == 200 and "broken.yaml:2:" in page.text


# --- read-only and private ------------------------------------------------------------

def test_the_studio_never_writes(studio_project: Path, client: TestClient) -> None:
    state = studio_project / ".mlinfra" / "default" / "state.db"
    if not state.exists():
        state = next(studio_project.glob(".mlinfra/*/state.db"))
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    for path in ("/", "/overview/drift", "/plan", "/runs", "/runs/train-0001",
                 "/runs/train-0001/log", "/compare?run=train-0001&run=train-0002", "/models",
                 "/models/m/1", "/data", "/endpoints", "/monitors", "/events",
                 "/api/runs/train-0001/metrics/auc"):
        assert client.get(path).status_code == 200, path
        assert client.post(path).status_code == 405, path
        assert client.delete(path).status_code == 405, path
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before


def test_security_headers_on_every_answer(client: TestClient) -> None:
    for path in ("/", "/static/studio.js", "/runs/nope", "/no-such-page"):
        answer = client.get(path)
        assert "script-src 'self'" in answer.headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["server-timing"].startswith("app;dur=")
    assert client.get("/", headers={"Host": "evil.example.com"}).status_code == 400
    assert client.get("/", headers={"Host": "localhost.evil.example.com"}).status_code == 400
    for host in ("127.0.0.1:8765", "localhost", "[::1]:8765"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host


def test_pages_carry_no_inline_script_and_no_outside_resource(client: TestClient) -> None:
    for path in ("/", "/plan", "/runs", "/runs/train-0001", "/models", "/models/m/1"):
        text = client.get(path).text
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text
        for piece in text.split("<script")[1:]:
            head = piece.split(">", 1)[0]
            assert 'src="/static/' in head or 'type="application/json"' in head, (path, head)
    vendored = Path(__file__).parent.parent / "mlinfra" / "studio" / "static" / "vendor"
    for name in ("uplot", "htmx", "dagre"):
        assert (vendored / name / "LICENSE").is_file()
        assert client.get(f"/static/vendor/{name}/LICENSE").status_code == 200


def test_a_token_is_required_off_the_loopback(studio_project: Path) -> None:
    assert required_token("127.0.0.1", None) is None
    assert required_token("localhost", None) is None
    with pytest.raises(StudioRefused) as refused:
        required_token("0.0.0.0", None)
    assert "MLINFRA_STUDIO_TOKEN" in refused.value.message
    with pytest.raises(StudioRefused):
        required_token("192.168.1.5", "short")
    assert required_token("0.0.0.0", TOKEN) == TOKEN
    studio = Studio(StudioOptions(directory=studio_project, host="0.0.0.0", token=TOKEN))
    with TestClient(create_app(studio), base_url="http://studio.lan") as anyone:
        assert anyone.get("/").status_code == 401
        assert anyone.get("/", headers={"Authorization": "Bearer wrong-token-xxxxx"}
                          ).status_code == 401
        assert anyone.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        first = anyone.get("/runs", params={"token": TOKEN})
        assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"]
        assert anyone.get("/models").status_code == 200  # the cookie carries it now


def test_mlinfra_studio_refuses_an_open_address_without_a_token(
        studio_project: Path, cli: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLINFRA_STUDIO_TOKEN", raising=False)
    refused = cli("studio", "--host", "0.0.0.0")
    assert refused.code == 2 and "set MLINFRA_STUDIO_TOKEN" in refused.err
    assert "Traceback" not in refused.err
    with pytest.raises(SystemExit) as exited:
        cli("studio", "--port", "99999")
    assert exited.value.code == 2


def test_redact_hides_secrets_and_url_passwords() -> None:
    shown = redact({"remote": "https://bob:pw@git.example.com/x.git", "PASSWORD": "p",
                    "nested": [{"api_key": "k", "name": "n"}], "token": ""})
    assert shown == {"remote": "https://git.example.com/x.git", "PASSWORD": "(hidden)",
                     "nested": [{"api_key": "(hidden)", "name": "n"}], "token": ""}


def test_a_stack_without_state_yet_is_shown_once_applied(project: Callable[..., Path],
                                                         cli: Callable[..., Result]) -> None:
    root = project({})
    studio = Studio(StudioOptions(directory=root))
    with TestClient(create_app(studio), base_url=BASE_URL) as test_client:
        assert "Nothing applied yet" in test_client.get("/").text
        assert "0 of 0 runs" in test_client.get("/runs").text
        assert cli("apply", "--auto-approve").code == 0
        assert "workspace.ws" in test_client.get("/").text


def test_snapshot_zip_helpers_read_only_what_is_there(tmp_path: Path) -> None:
    from mlinfra.studio.run_pages import snapshot_file, snapshot_files

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.py", "x = 1\n")
        zf.writestr("blob.bin", b"\0\1\2")
    (tmp_path / "snapshot.zip").write_bytes(buffer.getvalue())
    run = Run(id="r", job="j", experiment="e", run_hash="h", run_dir=str(tmp_path))
    assert snapshot_files(run) == [("a.py", 6), ("blob.bin", 3)]
    assert snapshot_file(run, "a.py") == "x = 1\n"
    assert snapshot_file(run, "blob.bin") == "(binary file, 3 bytes)"
    assert snapshot_file(run, "missing.py") is None


def test_last_applies_are_grouped_by_session() -> None:
    from mlinfra.studio.overview import sessions

    rows = [(110.0, "u", "h", "apply", "endpoint.e", "update", 6, "changed"),
            (109.0, "u", "h", "apply", "job.j", "update", 5, "changed"),
            (50.0, "u", "h", "models alias", "model.m", "alias", 4, "m@c -> 1"),
            (20.0, "u", "h", "apply", "endpoint.e", "create", 3, "new resource"),
            (19.0, "u", "h", "apply", "job.j", "create", 2, "new resource"),
            (10.0, "u", "h", "apply", "job.j", "create", 1, "new resource")]
    found = sessions(rows)
    assert [(s.command, len(s.changes)) for s in found] == [
        ("apply", 2), ("models alias", 1), ("apply", 2), ("apply", 1)]
    assert found[0].changes[0] == ("job.j", "update", "changed")


def test_the_studio_reads_a_state_on_postgresql(postgres: PostgresServer,
                                               project: Callable[..., Path],
                                               cli: Callable[..., Result],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.url(schema=postgres.new_schema()).replace(
        "mlinfra@", "mlinfra:${secret.STUDIO_PG_PASSWORD}@")
    monkeypatch.setenv("STUDIO_PG_PASSWORD", PASSWORD)
    root = project({"models/m.onnx": onnx_model(),
                    "model.yaml": "kind: Model\nname: m\nfrom: {path: models/m.onnx}\n",
                    "stacks/team.yaml": f"kind: Stack\nname: team\nstate: {url}\n"})
    assert cli("apply", "-s", "team", "--auto-approve").code == 0
    _write_runs(root, 12, stack="team")
    studio = Studio(StudioOptions(directory=root, stack="team"))
    with TestClient(create_app(studio), base_url=BASE_URL) as test_client:
        overview = test_client.get("/")
        assert "postgresql://" in overview.text and PASSWORD not in overview.text
        runs = test_client.get("/runs", params={"q": "params.depth >= 3 and job = train",
                                                "sort": "params.lr"})
        # depth = i % 5 >= 3 and i % 3 != 0 among 0..11: 4 and 8
        assert "2 of 12 runs" in runs.text
        assert runs.text.index("train-0008") < runs.text.index("train-0004")
        assert "m:1" in test_client.get("/models").text
        chart = test_client.get("/api/runs/train-0008/metrics/auc").json()
        assert chart["x"] == [1, 2, 3, 4]


def _write_windows(root: Path, monitor: str) -> None:
    """Three hourly windows of a monitor, as `mlinfra monitor run` records them: the
    second drifted on amount."""
    session = open_session(root, None, "test", write=True)
    try:
        with session.store.transaction() as cur:
            for i, (value, verdict) in enumerate([(0.02, "ok"), (0.31, "drift"),
                                                  (0.05, "ok")]):
                start = 1_700_000_000 + i * 3600
                cur.execute("INSERT INTO monitor_windows (monitor, window_start, window_end, "
                            "rows, status, model, reason, cursor, computed_at) VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (monitor, start, start + 3600, 800, verdict, "m:1", "", "",
                             start + 3600))
                cur.execute("INSERT INTO monitor_signals (monitor, window_start, signal, "
                            "feature, metric, value, threshold, verdict, rows) VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (monitor, start, "data_drift", "amount", "wasserstein", value,
                             0.1, verdict, 800))
    finally:
        session.close()


def test_monitors_page_draws_each_signal_per_window(studio_project: Path,
                                                     client: TestClient) -> None:
    assert "No monitor declared" in client.get("/monitors").text
    _write_windows(studio_project, "watch")
    page = client.get("/monitors")
    assert page.status_code == 200
    assert "watch" in page.text and "no longer declared" in page.text
    assert "data_drift · amount · wasserstein" in page.text and "drifted in 1" in page.text
    data = json.loads(page.text.split('id="monitor-watch-1">')[1].split("</script>")[0])
    assert data["x"] == [1_700_000_000, 1_700_003_600, 1_700_007_200]
    assert data["series"][0]["values"] == [0.02, 0.31, 0.05]
    assert data["series"][1]["values"] == [0.1, 0.1, 0.1]
    assert page.text.count('class="badge monitor-drift"') == 1


def test_events_page_shows_each_delivery(studio_project: Path, client: TestClient) -> None:
    session = open_session(studio_project, None, "test", write=True)
    try:
        with session.store.transaction() as cur:
            for seq, (kind, subject) in enumerate([("model.promoted", "model/m"),
                                                   ("run.failed", "run/train-0007")], 1):
                envelope = {"specversion": "1.0", "id": f"ev-{seq}", "type": kind,
                            "data": {"subject": subject, "password": "pw-should-not-show"}}
                cur.execute("INSERT INTO outbox (event_id, type, subject, at, envelope) "
                            "VALUES (?, ?, ?, ?, ?)", (f"ev-{seq}", kind, subject,
                                                       1_700_000_000 + seq,
                                                       json.dumps(envelope)))
            cur.execute("INSERT INTO deliveries (event_id, webhook, status, attempts, "
                        "next_at, last_status, delivered_at) VALUES "
                        "('ev-1', 'ops', 'delivered', 1, 0, 204, 1700000002)")
            cur.execute("INSERT INTO deliveries (event_id, webhook, status, attempts, "
                        "next_at, last_status, last_error) VALUES "
                        "('ev-2', 'ops', 'failed', 8, 0, 500, 'HTTP 500')")
    finally:
        session.close()
    page = client.get("/events")
    assert page.status_code == 200
    total = int(page.text.split(" events in the outbox")[0].rsplit(">", 1)[1])
    assert total >= 2  # the apply's own events, and these two
    for text in ("model.promoted", "run/train-0007",
                 "delivered (HTTP 204, try 1)", "failed after 8 tries: HTTP 500"):
        assert text in page.text, text
    assert "pw-should-not-show" not in page.text
    failed = client.get("/events", params={"failed": "1"})
    assert "run.failed" in failed.text and "model.promoted" not in failed.text
