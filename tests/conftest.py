"""Shared fixtures: build a project in a temp folder and run the CLI as a user would."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlinfra.cli import main

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
