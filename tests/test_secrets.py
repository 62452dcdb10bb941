"""Secrets and sensitive variables: the process that uses a value gets it, and nothing
that mlinfra writes or prints holds it (state, plans, runs, logs, snapshots)."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Result

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
SECRET = "s3cr3t-7Gq2vX9-tokn"       # ${secret.API_TOKEN}
PASSWORD = "pw-Zk4mN8-r7Qy2"          # ${var.db_password}, declared sensitive
WHEEL_DIR = "wheels-Hq7Lp3-idx"       # ${secret.WHEEL_DIR}: a private index stands in
SENSITIVE = [SECRET, PASSWORD, WHEEL_DIR]

# The job checks what it was given against digests: it never prints a value.
CHECK = '''\
import argparse, hashlib, os, sys
import tinypkg
want = {digests!r}
p = argparse.ArgumentParser()
p.add_argument("--token"); p.add_argument("--pw"); p.add_argument("--greeting")
p.add_argument("--out")
a = p.parse_args()
got = {{"token": a.token, "pw": a.pw, "greeting": a.greeting,
        "env_token": os.environ.get("API_TOKEN_FOR_JOB"), "env_db": os.environ.get("DB"),
        "env_from_environment": os.environ.get("FROM_ENVIRONMENT"),
        # mlinfra's own environment holds these; the job inherits none of them
        "inherited": sorted(k for k in ("API_TOKEN", "WHEEL_DIR", "PGPASSWORD",
                                        "PULUMI_CONFIG_PASSPHRASE") if k in os.environ)}}
wrong = [k for k, v in got.items()
         if hashlib.sha256(str(v).encode()).hexdigest() != want[k]]
if wrong:
    print("wrong values for", wrong)
    sys.exit(3)
open(a.out, "w").write("ok " + tinypkg.NAME)
print("checked", len(got), "values")
'''

PROJECT = """\
kind: Project
name: proj
variables:
  db_password: {{sensitive: true}}
  label: {{default: plain}}
"""

RESOURCES = """\
kind: Environment
name: tools
python: "{python}"
requirements:
  - tinypkg @ file://{wheels}/${{secret.WHEEL_DIR}}/tinypkg-0.1-py3-none-any.whl
env: {{FROM_ENVIRONMENT: "${{secret.API_TOKEN}}"}}
---
kind: Job
name: use
code: ./job
environment: tools
command: >-
  python check.py --token ${{secret.API_TOKEN}} --pw ${{params.pw}}
  --greeting ${{params.greeting}} --out ${{outputs.report}}
params:
  pw: "${{var.db_password}}"
  greeting: "hi ${{secret.API_TOKEN}}!"
  label: "${{var.label}}"
env: {{API_TOKEN_FOR_JOB: "${{secret.API_TOKEN}}", DB: "${{var.db_password}}"}}
outputs: {{report: report.txt}}
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _wheel(folder: Path) -> None:
    """A tiny pure-Python wheel: the build installs it offline from a 'private' folder."""
    folder.mkdir(parents=True)
    info = "tinypkg-0.1.dist-info"
    files = {"tinypkg/__init__.py": "NAME = 'tinypkg'\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    with zipfile.ZipFile(folder / "tinypkg-0.1-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
        whl.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))


@pytest.fixture
def secret_project(project: Callable[..., Path], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    wheels = tmp_path / "index"
    _wheel(wheels / WHEEL_DIR)
    digests = {"token": _sha(SECRET), "pw": _sha(PASSWORD), "greeting": _sha(f"hi {SECRET}!"),
               "env_token": _sha(SECRET), "env_db": _sha(PASSWORD),
               "env_from_environment": _sha(SECRET), "inherited": _sha("[]")}
    monkeypatch.setenv("API_TOKEN", SECRET)
    monkeypatch.setenv("PGPASSWORD", "a-libpq-password")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "a-passphrase")
    monkeypatch.setenv("WHEEL_DIR", WHEEL_DIR)
    return project({"mlinfra.yaml": PROJECT.format(),
                    "stacks/dev.yaml": f"kind: Stack\nname: dev\nvariables:\n"
                                       f"  db_password: {PASSWORD}\n",
                    "jobs.yaml": RESOURCES.format(python=PYTHON, wheels=wheels),
                    "job/check.py": CHECK.format(digests=digests)})


def _leaks(root: Path, printed: list[str]) -> list[str]:
    """Every file under the project (state, WAL, backups, plans, runs, snapshots, logs,
    caches) and every printed text that holds a sensitive value."""
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path == root / "stacks" / "dev.yaml":  # the user's own
            continue
        data = path.read_bytes()
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                data += b"".join(archive.read(n) for n in archive.namelist())
        found += [f"{path.relative_to(root)}: {value}" for value in SENSITIVE
                  if value.encode() in data]
    found += [f"printed: {value} in {text[:200]!r}" for text in printed
              for value in [*SENSITIVE, "sensitive:scrypt"] if value in text]
    return found


def _run(cli: Callable[..., Result], printed: list[str], *args: str) -> Result:
    result = cli(*args)
    printed += [result.out, result.err]
    return result


@pytest.mark.slow
def test_secrets_reach_the_processes_and_nothing_records_them(
        secret_project: Path, cli: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[str] = []
    assert _run(cli, printed, "validate").code == 0
    shown = _run(cli, printed, "plan")
    assert shown.code == 0, shown.err
    assert "(sensitive)" in shown.out and "plain" in shown.out  # only sensitive ones masked
    as_json = _run(cli, printed, "plan", "--json")
    assert as_json.code == 0 and '"(sensitive)"' in as_json.out
    assert _run(cli, printed, "plan", "--out", "plan.json").code == 0
    applied = _run(cli, printed, "apply", "plan.json")
    assert applied.code == 0, applied.err  # a saved plan with new secrets is not stale
    assert "checked 7 values" in applied.out  # the job got every value, resolved
    outputs = json.loads(_run(cli, printed, "output", "--json").out)
    assert outputs["job.use"]["status"] == "completed"
    _run(cli, printed, "output")
    run_id = outputs["job.use"]["run_id"]
    run = json.loads(_run(cli, printed, "runs", "show", run_id).out)
    assert run["params"]["pw"] == "${var.db_password}"  # the record names, never holds
    assert "${secret.API_TOKEN}" in run["params"]["greeting"]
    assert "checked 7 values" in _run(cli, printed, "runs", "logs", run_id).out
    _run(cli, printed, "runs", "list")
    for address in ("environment.tools", "job.use"):
        state = json.loads(_run(cli, printed, "state", "show", address).out)
        assert "(sensitive)" in json.dumps(state["attributes"])
    assert _run(cli, printed, "plan", "--detailed-exitcode").code == 0  # same salts, no diff

    monkeypatch.setenv("API_TOKEN", SECRET + "-rotated")
    changed = _run(cli, printed, "plan")
    assert "~ env.API_TOKEN_FOR_JOB = (sensitive) -> (sensitive)" in changed.out
    rotated = _run(cli, printed, "apply", "--auto-approve")
    assert rotated.code == 0, rotated.err
    assert "checked" not in rotated.out  # a secret is not part of the run's hash
    assert _run(cli, printed, "plan", "--detailed-exitcode").code == 0
    printed = [text.replace(SECRET + "-rotated", "") for text in printed]

    assert _leaks(secret_project, printed) == []


def test_state_holds_salted_scrypt_hashes_and_no_key(project: Callable[..., Path],
                                                     cli: Callable[..., Result],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", SECRET)
    command = ("python -c \"import hashlib, os; assert 'API_TOKEN' not in os.environ; "
               f"assert hashlib.sha256(os.environ['T'].encode()).hexdigest() == '{_sha(SECRET)}'\"")
    jobs = "".join(f"---\nkind: Job\nname: {name}\ncommand: >-\n  {command}\n"
                   "env: {T: \"${secret.API_TOKEN}\"}\n" for name in ("one", "two"))
    root = project({"jobs.yaml": jobs})
    result = cli("apply", "--auto-approve")
    assert result.code == 0, result.err
    db = sqlite3.connect(root / ".mlinfra" / "dev" / "state.db")
    assert db.execute("SELECT key FROM meta WHERE key LIKE '%secret%' OR key LIKE '%key%'"
                      ).fetchall() == []
    stored = {}
    for name in ("one", "two"):
        (attributes,) = db.execute("SELECT attributes FROM resources WHERE address=?",
                                   (f"job.{name}",)).fetchone()
        stored[name] = json.loads(attributes)["env"]["T"]
    db.close()
    salts = set()
    for value in stored.values():
        match = re.fullmatch(r"sensitive:scrypt\$([0-9a-f]{32})\$([0-9a-f]{64})", value)
        assert match, value
        salt = bytes.fromhex(match.group(1))
        assert hashlib.scrypt(SECRET.encode(), salt=salt, n=2**14, r=8, p=1,
                              dklen=32).hex() == match.group(2)
        salts.add(salt)
    assert len(salts) == 2  # one salt per value: equal secrets do not look equal
    assert cli("plan", "--detailed-exitcode").code == 0


def test_destroy_needs_no_secret(project: Callable[..., Path], cli: Callable[..., Result],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", SECRET)
    project({"jobs.yaml": "kind: Job\nname: one\ncommand: python -c pass\n"
                          "env: {T: \"${secret.API_TOKEN}\"}\n"})
    assert cli("apply", "--auto-approve").code == 0
    monkeypatch.delenv("API_TOKEN")
    missing = cli("plan")
    assert missing.code == 1 and "secret 'API_TOKEN' is not set" in missing.err
    destroyed = cli("destroy", "--auto-approve")
    assert destroyed.code == 0, destroyed.err
    assert cli("state", "list").out == ""


def test_sensitive_variable_masked_in_plan_and_change_detected(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    root = project({"mlinfra.yaml": PROJECT.format(),
                    "stacks/dev.yaml": f"kind: Stack\nname: dev\nvariables:\n"
                                       f"  db_password: {PASSWORD}\n",
                    "jobs.yaml": "kind: Job\nname: one\ncommand: python -c pass\n"
                                 "env: {P: \"${var.db_password}\", L: \"${var.label}\"}\n"})
    shown = cli("plan")
    assert shown.code == 0, shown.err
    assert PASSWORD not in shown.out
    assert re.search(r"\+ env\.P +=", shown.out) and re.search(r'\+ env\.L += "plain"', shown.out)
    assert re.search(r"\+ env\.P += \(sensitive\)", shown.out)
    assert PASSWORD not in cli("plan", "--json").out
    assert cli("apply", "--auto-approve").code == 0
    assert cli("plan", "--detailed-exitcode").code == 0
    (root / "stacks" / "dev.yaml").write_text(
        "kind: Stack\nname: dev\nvariables:\n  db_password: another\n")
    changed = cli("plan")
    assert re.search(r"~ env\.P += \(sensitive\) -> \(sensitive\)", changed.out)
    assert "another" not in changed.out


@pytest.mark.parametrize(("field", "text"), [
    ("datastore", "kind: Datastore\nname: other\npath: ./data/${secret.API_TOKEN}\n"),
    ("description", "kind: Job\nname: one\ncommand: python -c pass\n"
                    "description: uses ${var.db_password}\n"),
])
def test_sensitive_value_refused_where_it_would_be_recorded(
        project: Callable[..., Path], cli: Callable[..., Result], field: str,
        text: str) -> None:
    project({"mlinfra.yaml": PROJECT.format(), "a.yaml": text,
             "stacks/dev.yaml": f"kind: Stack\nname: dev\nvariables:\n"
                                f"  db_password: {PASSWORD}\n"})
    result = cli("validate")
    assert result.code == 1
    assert "a.yaml:" in result.err and f"{field}" in result.err
    assert ("can be used only in command, params, env, requirements, a datastore's "
            "credentials and a webhook's url and secret") in result.err
    assert PASSWORD not in result.err


def test_pipeline_step_params_take_secrets(project: Callable[..., Path],
                                          cli: Callable[..., Result],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", SECRET)
    project({"p.yaml": "kind: Job\nname: check\ncode: ./job\n"
                       "command: python check.py ${params.p}\nparams: {p: none}\n---\n"
                       "kind: Pipeline\nname: flow\nsteps:\n"
                       "  only: {job: check, params: {p: \"x${secret.API_TOKEN}\"}}\n",
             "job/check.py": f"import sys\nwant = 'x' + {SECRET!r}\n"
                             "sys.exit(0 if sys.argv[1] == want else 3)\n"})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    step = next(line.split()[0] for line in cli("runs", "list").out.splitlines()
                if " only " in line)
    shown = cli("runs", "show", step).out
    assert '"p": "x${secret.API_TOKEN}"' in shown and SECRET not in shown


@pytest.mark.slow
def test_install_error_does_not_show_the_secret(project: Callable[..., Path],
                                                cli: Callable[..., Result],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHEEL_DIR", WHEEL_DIR)
    project({"e.yaml": f'kind: Environment\nname: tools\npython: "{PYTHON}"\nrequirements:\n'
                       "  - tinypkg @ file:///nonexistent/${secret.WHEEL_DIR}/"
                       "tinypkg-0.1-py3-none-any.whl\n"})
    result = cli("apply", "--auto-approve")
    assert result.code == 1
    assert "cannot resolve the requirements" in result.err
    assert "/nonexistent/(sensitive)/tinypkg" in result.err and WHEEL_DIR not in result.err


def test_state_from_keyed_hashes_moves_to_scrypt(project: Callable[..., Path],
                                                 cli: Callable[..., Result],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", SECRET)
    root = project({"jobs.yaml": "kind: Job\nname: one\ncommand: python -c pass\n"
                                 "env: {T: \"${secret.API_TOKEN}\"}\n"})
    assert cli("apply", "--auto-approve").code == 0
    db = sqlite3.connect(root / ".mlinfra" / "dev" / "state.db", isolation_level=None)
    (attributes,) = db.execute("SELECT attributes FROM resources WHERE address='job.one'"
                               ).fetchone()
    old = json.loads(attributes)
    old["env"]["T"] = "sensitive:0123456789abcdef"  # an HMAC-SHA256 of an earlier version
    db.execute("UPDATE resources SET attributes=? WHERE address='job.one'", (json.dumps(old),))
    # as a state of format 1, the only one that kept an HMAC key, would have it
    db.execute("INSERT INTO meta VALUES ('secret_key', ?)", ("ab" * 32,))
    db.execute("UPDATE meta SET value='1' WHERE key='format_version'")
    changed = cli("plan")
    assert re.search(r"~ env\.T += \(sensitive\) -> \(sensitive\)", changed.out)
    assert cli("apply", "--auto-approve").code == 0
    assert db.execute("SELECT * FROM meta WHERE key='secret_key'").fetchall() == []
    (attributes,) = db.execute("SELECT attributes FROM resources WHERE address='job.one'"
                               ).fetchone()
    db.close()
    assert json.loads(attributes)["env"]["T"].startswith("sensitive:scrypt$")
    assert cli("plan", "--detailed-exitcode").code == 0
