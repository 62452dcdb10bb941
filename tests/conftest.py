"""Shared fixtures: build a project in a temp folder and run the CLI as a user would."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from mlinfra.cli import main
from tests.postgres import PostgresServer, find_bindir
from tests.s3server import S3Server

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples" / "quickstart"

BASE = """\
kind: Workspace
name: ws
default_datastore: main
---
kind: Compute
name: cpu
type: local
---
kind: Datastore
name: main
path: ./data
"""


@dataclass
class Result:
    code: int
    out: str
    err: str


Files = dict[str, str | bytes]


def write_files(root: Path, files: Files) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))


def missing(reason: str) -> NoReturn:
    """A system part a test needs is not here: skipped, saying why; in CI (CI=true) a
    failure, so a missing part is never a silent pass."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Environments and interpreters are cached per test session, not in ~/.cache."""
    monkeypatch.setenv("MLINFRA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Files], Path]:
    """Make a project (mlinfra.yaml + BASE + the given files) and chdir into it."""

    def make(files: Files, base: bool = True) -> Path:
        root = tmp_path / "proj"
        root.mkdir(exist_ok=True)
        all_files: Files = {"mlinfra.yaml": "kind: Project\nname: proj\n"}
        if base:
            all_files["base.yaml"] = BASE
        all_files.update(files)
        write_files(root, all_files)
        (root / "data").mkdir(exist_ok=True)
        monkeypatch.chdir(root)
        return root

    return make


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `mlinfra ARGS` in-process and capture what it prints."""

    def run(*args: str) -> Result:
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """A private copy of the quickstart, so tests may change it."""
    target = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, target, ignore=shutil.ignore_patterns(".mlinfra"))
    return target


def onnx_model(weights: tuple[float, float] = (1.5, -0.5), bias: float = 0.1) -> bytes:
    """A logistic regression on two features: probabilities [N, 2] and labels [N]."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "B"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("W", TensorProto.FLOAT, [2, 1], list(weights)),
         helper.make_tensor("B", TensorProto.FLOAT, [1], [bias]),
         helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (see tests/postgres.py). Where none
    is installed the tests that need it are skipped, saying why; in CI (CI=true) they
    fail instead, so a missing server is never a silent pass."""
    bindir = find_bindir()
    if bindir is None:
        reason = ("PostgreSQL is not installed: no initdb in $MLINFRA_PG_BIN, "
                  "/usr/lib/postgresql/*/bin or PATH (.ci/run installs postgresql-15)")
        missing(reason)
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 API server on 127.0.0.1 for the whole session (see tests/s3server.py)."""
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
