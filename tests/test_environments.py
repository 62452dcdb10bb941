"""An Environment is identified by what it resolved: a lock of every package and version
that the state keeps, built the same on every machine, resolved again only when the
requirements change or on `apply -replace`. Its virtual environment is each machine's."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Files, Result

PYTHON = "{0.major}.{0.minor}".format(__import__("sys").version_info)

PROJECT = f"""\
kind: Environment
name: e
python: "{PYTHON}"
requirements: [six]
---
kind: Job
name: show
environment: e
code: ./steps
command: python show.py ${{outputs.o}}
outputs: {{o: version.txt}}
"""

SHOW = "import sys, six\nopen(sys.argv[1], 'w').write(six.__version__)\n"


def _attributes(cli: Callable[..., Result], address: str) -> dict[str, object]:
    shown = cli("state", "show", address)
    assert shown.code == 0, shown.err
    return dict(json.loads(shown.out)["attributes"])


def _six_in(venv: str) -> str:
    return subprocess.run([f"{venv}/bin/python", "-c", "import six; print(six.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_an_environment_is_its_lock_kept_until_replaced(
        project: Callable[[Files], Path], cli: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.providers.local import environment

    project({"e.yaml": PROJECT, "steps/show.py": SHOW})
    assert cli("apply", "--auto-approve").code == 0
    lock = _attributes(cli, "environment.e")["lock"]
    assert isinstance(lock, list) and len(lock) == 1 and str(lock[0]).startswith("six==")
    first = str(lock[0]).split("==")[1]
    assert _six_in(json.loads(cli("output", "--json").out)["environment.e"]["venv"]) == first
    # A new release of six appears: the lock holds, nothing is resolved again.
    older = "1.16.0" if first != "1.16.0" else "1.15.0"
    calls: list[str] = []

    def resolve(res: object, ctx: object, python: str) -> list[str]:
        calls.append(python)
        return [f"six=={older}"]

    monkeypatch.setattr(environment, "_resolve", resolve)
    monkeypatch.setattr(environment, "_RESOLVED", {})
    assert cli("plan", "--detailed-exitcode").code == 0 and calls == []
    # Resolving again is explicit, like Terraform's -upgrade of its lock file.
    planned = cli("plan", "-replace", "environment.e")
    assert planned.code == 0, planned.err
    assert "environment.e will be replaced" in planned.out, planned.out
    assert f"six=={older}" in planned.out  # the new lock is shown
    applied = cli("apply", "--auto-approve", "-replace", "environment.e")
    assert applied.code == 0, applied.err
    assert _attributes(cli, "environment.e")["lock"] == [f"six=={older}"]
    outputs = json.loads(cli("output", "--json").out)
    assert _six_in(outputs["environment.e"]["venv"]) == older
    run = json.loads(cli("runs", "show", str(outputs["job.show"]["run_id"])).out)
    assert Path(run["run_dir"], "outputs", "version.txt").read_text() == older
    assert cli("plan", "--detailed-exitcode").code == 0


@pytest.mark.slow
def test_two_machines_on_one_state_each_build_the_locked_environment(
        project: Callable[[Files], Path], cli: Callable[..., Result], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project({"e.yaml": PROJECT, "steps/show.py": SHOW})
    machine_a, machine_b = tmp_path / "cache-a", tmp_path / "cache-b"
    monkeypatch.setenv("MLINFRA_CACHE_DIR", str(machine_a))
    assert cli("apply", "--auto-approve").code == 0
    lock = _attributes(cli, "environment.e")["lock"]
    monkeypatch.setenv("MLINFRA_CACHE_DIR", str(machine_b))
    planned = cli("plan", "--detailed-exitcode")
    assert planned.code == 2 and "is not on this machine" in planned.out, planned.out
    assert "environment.e will be updated in-place" in planned.out
    assert "job.show" not in planned.out  # the same environment: the run is kept
    assert cli("apply", "--auto-approve").code == 0
    assert _attributes(cli, "environment.e")["lock"] == lock  # the same versions
    assert cli("plan", "--detailed-exitcode").code == 0
    monkeypatch.setenv("MLINFRA_CACHE_DIR", str(machine_a))
    assert cli("plan", "--detailed-exitcode").code == 0  # not "deleted" on the other one
    monkeypatch.setenv("MLINFRA_CACHE_DIR", str(machine_b))
    assert cli("plan", "--detailed-exitcode").code == 0


def test_replace_names_a_resource(project: Callable[[Files], Path],
                                  cli: Callable[..., Result]) -> None:
    project({})
    result = cli("plan", "-replace", "environment.nope")
    assert result.code == 1 and "-replace names no resource" in result.err, result.err
