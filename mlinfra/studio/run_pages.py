"""Pages 3 and 4, runs: the table (filtered, sorted and paged on the server), the
comparison of chosen runs, and one run with its params, charts, live log, code
snapshot, inputs and outputs, and environment."""

from __future__ import annotations

import json
import re
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mlinfra.runs.store import Run, RunStore
from mlinfra.studio import charts
from mlinfra.studio.context import redact
from mlinfra.studio.filters import FilterError
from mlinfra.studio.runs_index import Page

if TYPE_CHECKING:
    from mlinfra.studio.app import Pages

PAGE_SIZE = 100
# A log is sent in pieces of at most this many bytes; the page asks for the next.
LOG_CHUNK = 256 * 1024
# A code file larger than this is not shown inline.
CODE_LIMIT = 512 * 1024
_UPSTREAM = re.compile(r"\(run ([^)\s]+)\)$")
_DATA_REF = re.compile(r"^([a-z][a-z0-9-]{0,62}):(\d+)$")


def _int(text: str | None, default: int, low: int = 0, high: int = 1 << 31) -> int:
    try:
        return max(low, min(high, int(text or default)))
    except ValueError:
        return default


def snapshot_files(run: Run) -> list[tuple[str, int]]:
    """The files of the run's code snapshot (path, size)."""
    archive = Path(run.run_dir) / "snapshot.zip" if run.run_dir else None
    if archive is None or not archive.is_file():
        return []
    with zipfile.ZipFile(archive) as zf:
        return sorted((i.filename, i.file_size) for i in zf.infolist() if not i.is_dir())


def snapshot_file(run: Run, name: str) -> str | None:
    """One file of the snapshot as text (None if it is not there or not text)."""
    archive = Path(run.run_dir) / "snapshot.zip" if run.run_dir else None
    if archive is None or not archive.is_file():
        return None
    with zipfile.ZipFile(archive) as zf:
        try:
            info = zf.getinfo(name)
        except KeyError:
            return None
        if info.file_size > CODE_LIMIT:
            return f"({info.file_size} bytes: too large to show here)"
        data = zf.read(info)
    if b"\0" in data[:8192]:
        return f"(binary file, {len(data)} bytes)"
    return data.decode("utf-8", "replace")


def packages(run: Run) -> list[tuple[str, str]]:
    """The distributions installed in the run's environment (name, version), read
    from its site-packages' metadata."""
    venv = run.environment.get("venv") if isinstance(run.environment, dict) else None
    if not venv:
        return []
    found: dict[str, str] = {}
    for site in sorted(Path(venv).glob("lib/python*/site-packages")):
        for dist in metadata.distributions(path=[str(site)]):
            name = dist.metadata["Name"]
            if name:
                found[str(name)] = dist.version
    return sorted(found.items(), key=lambda item: item[0].lower())


def inputs_of(run: Run) -> list[dict[str, Any]]:
    """Each input with where it links: a data version, or the run that produced it."""
    out = []
    for name, label in sorted(run.inputs.items()):
        text = str(label)
        upstream = _UPSTREAM.search(text)
        data = _DATA_REF.match(text)
        out.append({"name": name, "label": text,
                    "run": upstream.group(1) if upstream else None,
                    "data": data.group(1) if data else None,
                    "version": int(data.group(2)) if data else None})
    return out


def outputs_of(store: Any, run: Run) -> list[dict[str, Any]]:
    """Each output with its sha256 and the model versions registered from it."""
    shas = [str(v) for v in run.outputs.values() if isinstance(v, str)]
    models: dict[str, list[str]] = {}
    if shas:
        marks = ", ".join("?" * len(shas))
        for name, version, sha in store.query(
                f"SELECT name, version, sha256 FROM models WHERE sha256 IN ({marks})",
                tuple(shas)):
            models.setdefault(str(sha), []).append(f"{name}:{version}")
    out: list[dict[str, Any]] = []
    for name, value in sorted(run.outputs.items()):
        if isinstance(value, str):
            out.append({"name": name, "sha256": value, "models": models.get(value, [])})
        elif name == "steps" and isinstance(value, dict):
            for step, info in sorted(value.items()):
                if isinstance(info, dict):
                    out.append({"name": f"step {step}", "run": info.get("run_id"),
                                "reused": info.get("reused"), "models": []})
    return out


def log_piece(run: Run, offset: int) -> tuple[str, int]:
    """The log from `offset`, at most LOG_CHUNK bytes, and the offset after it."""
    path = Path(run.run_dir) / "output.log" if run.run_dir else None
    if path is None or not path.is_file():
        return "", offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(LOG_CHUNK)
    # Never split a UTF-8 character: a tail cut short waits for the next piece.
    cut = len(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.reason == "unexpected end of data" and err.start > 0:
            cut = err.start
    return data[:cut].decode("utf-8", "replace"), offset + cut


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="num">-</td>'
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(escape(value if isinstance(value, str) else json.dumps(value)))
    return f'<td class="num">{text}</td>'


def value_cells(page: Page) -> dict[str, Markup]:
    """Each row's metric and param cells as HTML, escaped: 100 rows of 50 params are
    5,000 cells, which a template renders several times slower."""
    return {r.id: Markup("".join([*(_cell(r.metrics.get(k)) for k in page.metric_keys),
                                  *(_cell(r.params.get(k)) for k in page.param_keys)]))
            for r in page.rows}


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio
    curves = charts.Curves()

    def _run(request: Request) -> Run | None:
        return RunStore(studio.store).find(request.path_params["run_id"])

    def not_found(request: Request, what: str) -> HTMLResponse:
        return pages.render(request, "missing.html", "runs", what=what, status_code=404)

    def table(request: Request) -> HTMLResponse:
        q = request.query_params
        where, sort = q.get("q", ""), q.get("sort", "")
        descending = q.get("order", "desc") != "asc"
        offset = _int(q.get("offset"), 0)
        studio.store  # noqa: B018 (opens a state made since the studio started)
        error = ""
        try:
            page = studio.runs.page(where, sort, descending, offset, PAGE_SIZE)
        except FilterError as err:
            error = err.message
            page = studio.runs.page("", "", True, 0, PAGE_SIZE)
        values: dict[str, Any] = dict(
            page=page, q=where, sort=sort, order="desc" if descending else "asc",
            error=error, page_size=PAGE_SIZE, cells=value_cells(page))
        if request.headers.get("hx-request") and request.headers.get("hx-target") == \
                "runs-table":
            return pages.fragment("runs_table.html", **values)
        return pages.render(request, "runs.html", "runs", **values)

    def run_page(request: Request) -> HTMLResponse:
        run = _run(request)
        if run is None:
            return not_found(request, f"run {request.path_params['run_id']}")
        runs = RunStore(studio.store)
        params = {**run.params, **runs.logged_params(run.id)}
        finals = _finals(studio.store, run.id)
        children = studio.runs.children(run.id)
        return pages.render(
            request, "run.html", "runs", run=run, params=params, metrics=finals,
            keys=sorted(finals), git=redact(run.git), inputs=inputs_of(run),
            outputs=outputs_of(studio.store, run), files=snapshot_files(run),
            packages=packages(run), children=children,
            data_read=runs.data_read(run), environment=redact(run.environment),
            following=run.status in ("queued", "running"))

    def log(request: Request) -> HTMLResponse:
        run = _run(request)
        if run is None:
            return HTMLResponse("", status_code=404)
        text, offset = log_piece(run, _int(request.query_params.get("offset"), 0))
        more = run.status in ("queued", "running")
        return pages.fragment("log_piece.html", run=run, text=text, offset=offset,
                              more=more or len(text.encode()) >= LOG_CHUNK)

    def code(request: Request) -> HTMLResponse:
        run = _run(request)
        if run is None:
            return not_found(request, f"run {request.path_params['run_id']}")
        name = request.query_params.get("path", "")
        files = snapshot_files(run)
        content = snapshot_file(run, name) if name else None
        if name and content is None:
            return not_found(request, f"{name} in the code of run {run.id}")
        return pages.render(request, "code.html", "runs", run=run, files=files, name=name,
                            content=content)

    def metric(request: Request) -> Response:
        run = _run(request)
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        points = _int(request.query_params.get("points"), charts.DEFAULT_POINTS, 3,
                      charts.MAX_POINTS)
        data = curves.get(studio.store, run.id, request.path_params["key"], points,
                          run.status not in ("queued", "running"))
        return JSONResponse({"run": run.id, "key": request.path_params["key"], **data})

    def compare(request: Request) -> HTMLResponse:
        ids = [i for i in request.query_params.getlist("run") if i][:10]
        store = RunStore(studio.store)
        found = [store.find(i) for i in ids]
        missing = [i for i, r in zip(ids, found, strict=True) if r is None]
        chosen = [r for r in found if r is not None]
        params = [{**r.params, **store.logged_params(r.id)} for r in chosen]
        finals = [_finals(studio.store, r.id) for r in chosen]
        param_keys = sorted({k for p in params for k in p})
        metric_keys = sorted({k for m in finals for k in m})
        differs = {k: len({json.dumps(p.get(k), sort_keys=True, default=str)
                           for p in params}) > 1 for k in param_keys}
        return pages.render(request, "compare.html", "runs", runs=chosen, params=params,
                            finals=finals, param_keys=param_keys, metric_keys=metric_keys,
                            missing=missing, differs=differs)

    return [Route("/runs", table), Route("/compare", compare),
            Route("/runs/{run_id}", run_page), Route("/runs/{run_id}/log", log),
            Route("/runs/{run_id}/code", code),
            Route("/api/runs/{run_id}/metrics/{key:path}", metric)]


def _finals(store: Any, run_id: str) -> dict[str, float]:
    """Each metric's last value."""
    out: dict[str, float] = {}
    for key, value in store.query("SELECT key, value FROM metrics WHERE run_id=? ORDER BY id",
                                  (run_id,)):
        out[str(key)] = float(value)
    return out
