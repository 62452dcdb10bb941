"""What the README and the shipped files say is true."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, REPO, Result, onnx_model

STACK_FILES = [*sorted((REPO / "mlinfra" / "templates" / "stacks").glob("*.yaml")),
               *sorted((QUICKSTART / "stacks").glob("*.yaml"))]


def test_the_state_path_a_stack_names_is_its_default(tmp_path: Path,
                                                     cli: Callable[..., Result]) -> None:
    assert cli("init", str(tmp_path / "new")).code == 0
    for path in [*STACK_FILES, *sorted((tmp_path / "new" / "stacks").glob("*.yaml"))]:
        text = path.read_text()
        name = re.search(r"^name: (\S+)$", text, re.M)
        comment = re.search(r"^# state: (\S+)$", text, re.M)
        assert name is not None
        if "provider: local" in text:
            assert comment is not None and comment.group(1) == (
                f".mlinfra/{name.group(1)}/state.db"), path


def test_pulumi_stacks_without_the_cli_say_what_is_missing_and_touch_nothing(
        quickstart: Path, cli: Callable[..., Result], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan and apply on docker and kubernetes stop before anything,
    with one message naming what is missing and how to install it; validate works."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no `pulumi` on it
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    for stack in ("docker", "kubernetes"):
        text = (quickstart / "stacks" / f"{stack}.yaml").read_text()
        assert "PLANNED" not in text and "needs the Pulumi CLI" in text
        assert cli("validate", "-C", str(quickstart), "-s", stack).code == 0
        for command in (["plan"], ["apply", "--auto-approve"], ["destroy", "--auto-approve"]):
            result = cli(*command, "-C", str(quickstart), "-s", stack)
            assert result.code == 1, result
            assert result.err.count("Error:") == 1 and result.out == "", result.err
            assert "the Pulumi CLI is not installed" in result.err, result.err
            assert "https://www.pulumi.com/docs/install/" in result.err, result.err
            assert "PULUMI_CONFIG_PASSPHRASE is not set" in result.err, result.err
            assert "Nothing was changed" in result.err, result.err
        assert not (quickstart / ".mlinfra" / stack).exists()
    # With the CLI on PATH, only the passphrase is missing: never assumed empty.
    fake = empty / "pulumi"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    result = cli("plan", "-C", str(quickstart), "-s", "kubernetes")
    assert result.code == 1 and "CLI" not in result.err, result.err
    assert "PULUMI_CONFIG_PASSPHRASE is not set" in result.err, result.err
    assert not (quickstart / ".mlinfra" / "kubernetes").exists()
    readme = (REPO / "README.md").read_text()
    assert "postgresql://" in readme  # it works: tests/test_postgres_state.py


def test_an_error_shared_by_dependants_is_told_once(quickstart: Path,
                                                    cli: Callable[..., Result]) -> None:
    (quickstart / "data" / "transactions.csv").unlink()
    result = cli("plan", "-C", str(quickstart))
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == len(set(lines)), result.err
    assert lines[-1] == "2 resources cannot be planned", result.err


def test_make_clean_stops_the_endpoint_before_deleting_state(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    root = project({"models/m.onnx": onnx_model(),
                    "serving.yaml": "kind: Model\nname: m\nfrom: {path: models/m.onnx}\n---\n"
                                    "kind: Endpoint\nname: api\nauth: none\n"
                                    "deployments: [{name: blue, model: m}]\n"
                                    "traffic: {blue: 100}\n"})
    assert cli("apply", "--auto-approve").code == 0
    pid = int(json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["pid"])
    os.kill(pid, 0)  # serving
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(["make", "-s", "-C", str(REPO), "clean", f"VENV={tmp_path / 'novenv'}",
                           f"BIN={bin_dir}", f"QUICKSTART={root}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert not (root / ".mlinfra").exists()
    try:
        os.kill(pid, 0)
        alive = not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except ProcessLookupError:
        alive = False
    assert not alive, "the endpoint server outlived make clean"


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_command_table_names_each_command_once() -> None:
    commands = []
    for line in _section("Command line").splitlines():
        cell = re.match(r"\| `(mlinfra [^`]+)` \|", line)
        if not cell:
            continue
        words = []
        for token in cell.group(1).split():
            if token[0] in "[-\\|" or token.isupper():
                break
            words.append(token)
        commands.append(" ".join(words))
    assert len(commands) > 20
    assert sorted({c for c in commands if commands.count(c) > 1}) == []


def test_the_layout_names_each_part_once_and_each_part_exists() -> None:
    block = _section("Layout").split("```")[1]
    parts = re.findall(r"^  (\w+(?:/|\.py))", block, re.M)
    assert len(parts) > 10
    assert sorted({p for p in parts if parts.count(p) > 1}) == []
    assert [p for p in parts if not (REPO / "mlinfra" / p).exists()] == []


def test_the_serving_layer_imports_what_the_layout_says() -> None:
    import ast

    line = re.search(r"serving/ +the endpoint server: imports only ([^\n]+\n[^\n]+)",
                     _section("Layout"))
    assert line is not None
    named = {w.lower() for w in re.findall(r"[A-Za-z]+", line.group(1))}
    found = set()
    for path in (REPO / "mlinfra" / "serving").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    third_party = {m for m in found if m not in sys.stdlib_module_names
                   and m not in ("mlinfra", "__future__")}
    assert sorted(third_party - named) == []
