"""Environments as virtual environments built with uv, cached by the hash of their spec.

Two Environment resources with the same spec share one venv, in the user's cache
(`MLINFRA_CACHE_DIR`, default ~/.cache/mlinfra/envs/<hash>); a venv is complete once
its marker file is written, so a build cut short is rebuilt, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import Applied, BaseHandler, Context, ProviderError, cache_dir
from mlinfra.runs.environments import CURRENT_PYTHON, env_dir
from mlinfra.spec import sensitive
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState, digest

MARKER = "mlinfra-env.json"
UV_ENV = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}


def uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise ProviderError("environment", "uv is not installed: pip install uv") from None
        return found


def _run_uv(args: list[str], timeout: float = 900,
            secrets: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([uv_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **UV_ENV, **(secrets or {})}, check=False)


def installed_pythons() -> list[str]:
    done = _run_uv(["python", "list", "--only-installed"])
    versions = set(re.findall(r"cpython-(\d+\.\d+)\.\d+", done.stdout))
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


@cache
def find_python(version: str) -> str | None:
    """The interpreter for `version`, remembered in the cache while it exists."""
    memo = cache_dir() / "pythons.json"
    try:
        known: dict[str, str] = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if version in known and os.access(known[version], os.X_OK):
        return known[version]
    if version == CURRENT_PYTHON:
        found: str | None = sys.executable
    else:
        done = _run_uv(["python", "find", version])
        found = done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
    if found:
        known[version] = found
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(known))
    return found


def shorten(text: str, lines: int = 12) -> str:
    """The end of a tool's output, where the reason usually is."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    tail = kept[-lines:]
    return ("...\n" if len(kept) > lines else "") + "\n".join(tail)


class EnvironmentHandler(BaseHandler):
    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        spec = res.spec
        python = str(spec.get("python") or CURRENT_PYTHON)
        if find_python(python) is None:
            available = ", ".join(installed_pythons()) or "none"
            raise ProviderError(res.address, f"Python {python} is not installed, and uv cannot "
                                f"download interpreters here. Installed: {available}")
        requirements_sha = ""
        if spec.get("requirements_file"):
            path = ctx.root / str(spec["requirements_file"])
            requirements_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        key = {"python": python, "requirements": sorted(spec.get("requirements") or []),
               "requirements_file_sha256": requirements_sha}
        return {"spec_hash": digest(key)}

    def create(self, change: Change, ctx: Context) -> Applied:
        after = change.after or {}
        spec_hash = str(after["spec_hash"])
        folder = env_dir(spec_hash)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build per spec, across processes
            if _marker(folder) != spec_hash or not _runs(folder):
                ctx.log(f"{change.address}: building virtual environment {folder}")
                self._build(change, ctx, folder, spec_hash)
        return Applied({"venv": str(folder), "python": str(folder / "bin" / "python"),
                        "spec_hash": spec_hash}, provider_id=str(folder))

    def _build(self, change: Change, ctx: Context, folder: Path, spec_hash: str) -> None:
        after = change.after or {}
        python = str(after.get("python") or CURRENT_PYTHON)
        interpreter = find_python(python)
        if interpreter is None:
            raise ProviderError(change.address, f"Python {python} is not installed")
        shutil.rmtree(folder, ignore_errors=True)
        done = _run_uv(["venv", "--quiet", "--python", interpreter, str(folder)])
        if done.returncode != 0:
            raise ProviderError(change.address, "uv venv failed:\n" + shorten(done.stderr))
        args = ["pip", "install", "--quiet", "--python", str(folder / "bin" / "python")]
        res = ctx.config.get("Environment", change.name)
        requirements = [str(r) for r in ((res.spec if res else after).get("requirements")
                                         or [])]
        if after.get("requirements_file"):
            args += ["-r", str(ctx.root / str(after["requirements_file"]))]
        # A requirement with a secret (a private index's token) goes in a file that names
        # it as ${MLINFRA_SECRET_X}: uv expands it from its environment, so the value is
        # in neither its command line nor any file.
        secrets = ctx.secret_environment(requirements)
        hidden = [r for r in requirements if sensitive.holds(r)]
        if hidden:
            listing = folder / "mlinfra-requirements.txt"
            listing.write_text("".join(sensitive.as_env_references(r) + "\n" for r in hidden))
            args += ["-r", str(listing)]
        plain = [r for r in requirements if not sensitive.holds(r)]
        if requirements or after.get("requirements_file"):
            done = _run_uv(args + plain, secrets=secrets)
            if done.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                raise ProviderError(change.address, "cannot install the requirements:\n"
                                    + sensitive.redact(shorten(done.stderr), secrets))
        (folder / MARKER).write_text(json.dumps({"spec_hash": spec_hash,
                                                 "python": python,
                                                 "requirements": requirements}))

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        folder = Path(state.outputs.get("venv", ""))
        if not folder.exists():
            return Observed(False, f"virtual environment {folder} was deleted")
        if _marker(folder) != state.outputs.get("spec_hash") or not _runs(folder):
            return Observed(True, f"virtual environment {folder} is incomplete or broken")
        return Observed()

    def delete(self, state: ResourceState, ctx: Context) -> None:
        # NOTE: the venv stays in the cache: other resources and projects may share it.
        return None


def _runs(folder: Path) -> bool:
    """The venv's interpreter is there and can be started (its link may point at a
    Python that was removed)."""
    python = folder / "bin" / "python"
    return os.access(python, os.X_OK) and python.resolve().exists()


def _marker(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MARKER).read_text())["spec_hash"])
    except (OSError, ValueError, KeyError):
        return None
