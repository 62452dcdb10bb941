"""What reaches outside its bounds is refused: a Data path through a link out of its
datastore, a loop of links in a job's code; an environment build gets only the variables
it needs; a machine is known by a persistent identity, not its host name."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Files, Result

DATA = """\
kind: Data
name: rows
path: {path}
format: csv
"""
JOB = """\
kind: Job
name: train
code: ./{code}
command: python train.py ${{outputs.out}}
outputs: {{out: out.txt}}
"""


def test_a_data_path_through_a_link_out_of_its_datastore_is_refused(
        project: Callable[[Files], Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.csv"
    secret.write_text("user,password\nroot,hunter2\n")
    root = project({"data.yaml": DATA.format(path="rows.csv")})
    os.symlink(secret, root / "data" / "rows.csv")
    plan = cli("plan")
    assert plan.code == 1 and "Traceback" not in plan.err
    assert f"is a symbolic link to {secret}, outside its datastore" in plan.err
    (root / "data.yaml").write_text(DATA.format(path="../../elsewhere.csv"))
    assert "must be a path inside the datastore" in cli("plan").err
    (root / "data.yaml").write_text(DATA.format(path="folder"))
    (root / "data" / "rows.csv").unlink()
    (root / "data" / "folder").mkdir()
    (root / "data" / "folder" / "a.csv").write_text("x\n1\n")
    os.symlink(secret, root / "data" / "folder" / "b.csv")
    assert "b.csv is a symbolic link to" in cli("plan").err
    (root / "data" / "folder" / "b.csv").unlink()
    os.symlink("a.csv", root / "data" / "folder" / "b.csv")  # inside: fine
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err


def test_a_loop_of_links_in_code_is_refused(project: Callable[[Files], Path],
                                            cli: Callable[..., Result]) -> None:
    root = project({"job.yaml": JOB.format(code="train"),
                    "train/train.py": "import sys\nopen(sys.argv[1], 'w').write('ok')\n"})
    os.symlink("loop-b", root / "train" / "loop-a")
    os.symlink("loop-a", root / "train" / "loop-b")
    plan = cli("plan")
    assert plan.code == 1 and "Traceback" not in plan.err
    assert "train/loop-a is a loop of symbolic links" in plan.err
    (root / "job.yaml").write_text(JOB.format(code="self"))
    os.symlink("self", root / "self")
    plan = cli("plan")
    assert plan.code == 1 and "code: './self' is a loop of symbolic links" in plan.err, plan.err


def test_an_environment_build_gets_only_what_it_needs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """uv (and so every requirement's build code) runs with a fake uv that writes down
    its environment: no secret of mlinfra's own environment is in it."""
    from mlinfra.providers.local import environment

    seen = tmp_path / "env.txt"
    fake = tmp_path / "uv"
    fake.write_text(f"#!/bin/sh\nenv > {seen}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(environment, "uv_bin", lambda: str(fake))
    for name, value in (("PGPASSWORD", "pg-secret"), ("PULUMI_CONFIG_PASSPHRASE", "pp"),
                        ("OPENAI_API_KEY", "sk-secret"), ("UV_INDEX_URL", "https://idx/simple"),
                        ("HTTPS_PROXY", "http://proxy:3128")):
        monkeypatch.setenv(name, value)
    done = environment._run_uv(["pip", "install", "x"],
                               secrets={"MLINFRA_SECRET_TOKEN": "for-the-index"})
    assert done.returncode == 0
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    for withheld in ("PGPASSWORD", "PULUMI_CONFIG_PASSPHRASE", "OPENAI_API_KEY"):
        assert withheld not in env
    assert env["UV_INDEX_URL"] == "https://idx/simple" and env["PATH"]
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["MLINFRA_SECRET_TOKEN"] == "for-the-index"  # a requirement names it
    assert env["UV_PYTHON_DOWNLOADS"] == "never"


def test_a_machine_is_known_by_a_persistent_identity(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.state import store

    assert f"{os.uname().nodename}~{store.MACHINE}" == store.HOST
    assert store.on_this_machine(store.HOST)
    assert store.on_this_machine(f"renamed-laptop~{store.MACHINE}")  # a new host name
    assert not store.on_this_machine(f"{os.uname().nodename}~0123456789ab")  # a namesake
    assert store.on_this_machine(os.uname().nodename)  # a row written before identities
    # Without /etc/machine-id (a container): an id made once, kept in mlinfra's cache.
    monkeypatch.setenv("MLINFRA_CACHE_DIR", str(tmp_path / "cache"))
    real_read = Path.read_text

    def no_system_id(self: Path, *args: object, **kwargs: object) -> str:
        if str(self) in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            raise FileNotFoundError(str(self))
        return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", no_system_id)
    first = store.machine_id()
    assert first == store.machine_id() == (tmp_path / "cache" / "machine-id").read_text().strip()
    assert len(first) == 32
