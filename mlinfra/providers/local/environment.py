"""Environments as virtual environments built with uv from a lock.

An Environment is identified by what it resolved, not by its requirement list: the plan
resolves the requirements once (`uv pip compile`: every package and version) into the
resource's `lock`, which the state keeps; `env_hash` (the Python and the lock) is its
identity, in every run hash. The lock is resolved again only when the requirements
change or on `apply -replace environment.NAME`, as Terraform's dependency lock file;
every machine builds the same versions from it.

A venv lives on each machine, in the user's cache (`MLINFRA_CACHE_DIR`, default
~/.cache/mlinfra/envs/<env_hash>), wherever the state was applied from: a machine that
has not built it yet builds it from the lock. Environments with the same lock share
one venv; a venv is complete once its marker file is written, so a build cut short is
rebuilt, never used.
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
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import Applied, BaseHandler, Context, ProviderError, cache_dir
from mlinfra.runs.environments import CURRENT_PYTHON, env_dir
from mlinfra.spec import sensitive
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState, digest
from mlinfra.state.store import HOST

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


# What uv, and the build code of every requirement it builds, gets of mlinfra's own
# environment: where things are, the locale, uv's own settings, network (proxies, CA
# certificates, .netrc) and compiler settings. Never the rest: mlinfra's environment
# holds every ${secret.X} of the project, the state's password, Pulumi's passphrase.
BUILD_VARS = frozenset((
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NETRC", "HTTP_PROXY",
    "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
    "no_proxy", "CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "PKG_CONFIG_PATH",
    "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "MAKEFLAGS", "CARGO_HOME", "RUSTUP_HOME"))
BUILD_PREFIXES = ("UV_", "LC_", "XDG_")


def build_environment(secrets: dict[str, str] | None = None) -> dict[str, str]:
    """uv's environment: BUILD_VARS of mlinfra's, uv's settings, and the secrets its
    requirements name (as MLINFRA_SECRET_X)."""
    kept = {k: v for k, v in os.environ.items()
            if k in BUILD_VARS or k.startswith(BUILD_PREFIXES)}
    return {**kept, **UV_ENV, **(secrets or {})}


def _run_uv(args: list[str], timeout: float = 900,
            secrets: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([uv_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          env=build_environment(secrets), check=False)


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
        spec_hash = digest(key)
        lock = self._lock(res, ctx, spec_hash, python)
        return {"spec_hash": spec_hash, "lock": lock,
                "env_hash": digest({"python": python, "lock": lock})}

    def _lock(self, res: Resource, ctx: Context, spec_hash: str, python: str) -> list[str]:
        """What the requirements resolve to: the state's lock while the requirements are
        those it was resolved from (and no -replace asks again); else resolved now."""
        spec = res.spec
        if not spec.get("requirements") and not spec.get("requirements_file"):
            return []
        have = ctx.store.get(res.address)
        if (have is not None and have.attributes.get("spec_hash") == spec_hash
                and isinstance(have.attributes.get("lock"), list)
                and res.address not in ctx.replacing):
            return [str(line) for line in have.attributes["lock"]]
        memo = (spec_hash, res.address in ctx.replacing)
        if memo not in _RESOLVED:
            _RESOLVED[memo] = _resolve(res, ctx, python)
        return _RESOLVED[memo]

    def create(self, change: Change, ctx: Context) -> Applied:
        after = change.after or {}
        env_hash = str(after.get("env_hash") or after["spec_hash"])
        folder = env_dir(env_hash)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build per lock, across processes
            if _marker(folder) != env_hash or not _runs(folder):
                ctx.log(f"{change.address}: building virtual environment {folder}")
                self._build(change, ctx, folder, env_hash)
        return Applied({"venv": str(folder), "python": str(folder / "bin" / "python"),
                        "spec_hash": after.get("spec_hash"), "env_hash": env_hash},
                       provider_id=env_hash)

    def _build(self, change: Change, ctx: Context, folder: Path, env_hash: str) -> None:
        """The venv, with exactly the planned lock's packages (nothing is resolved
        here: what was planned is what is installed, on every machine)."""
        after = change.after or {}
        python = str(after.get("python") or CURRENT_PYTHON)
        interpreter = find_python(python)
        if interpreter is None:
            raise ProviderError(change.address, f"Python {python} is not installed")
        shutil.rmtree(folder, ignore_errors=True)
        done = _run_uv(["venv", "--quiet", "--python", interpreter, str(folder)])
        if done.returncode != 0:
            raise ProviderError(change.address, "uv venv failed:\n" + shorten(done.stderr))
        lock = [str(line) for line in after.get("lock") or []]
        if lock:
            # A locked line with a secret (a private index's token) names it as
            # ${MLINFRA_SECRET_X}: uv expands it from its environment, so the value is in
            # neither its command line nor any file.
            listing = folder / "mlinfra-lock.txt"
            listing.write_text("".join(line + "\n" for line in lock))
            secrets = _secrets_of(ctx, change.name)
            done = _run_uv(["pip", "sync", "--quiet", "--python",
                            str(folder / "bin" / "python"), str(listing)], secrets=secrets)
            if done.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                raise ProviderError(change.address, "cannot install the locked requirements:\n"
                                    + sensitive.redact(shorten(done.stderr), secrets))
        (folder / MARKER).write_text(json.dumps({"env_hash": env_hash, "python": python,
                                                 "lock": lock}))

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        # NOTE: the venv is this machine's, wherever the state was applied from: its
        # place follows from the lock, never from a path another machine recorded.
        env_hash = str(state.attributes.get("env_hash") or "")
        if not env_hash:  # recorded before environments had a lock: resolved again
            return Observed(True, "the environment has no lock yet", update=True)
        folder = env_dir(env_hash)
        if not folder.exists():
            return Observed(True, f"virtual environment {folder} is not on this machine "
                            f"({HOST}): it is built from the lock", update=True)
        if _marker(folder) != env_hash or not _runs(folder):
            return Observed(True, f"virtual environment {folder} is incomplete or broken",
                            update=True)
        return Observed()

    def delete(self, state: ResourceState, ctx: Context) -> None:
        # NOTE: the venv stays in the cache: other resources and projects may share it.
        return None


# Locks resolved in this process, by spec (and whether a replace asked for it): a plan
# and the check of a saved plan agree.
_RESOLVED: dict[tuple[str, bool], list[str]] = {}


def _requirements(res: Resource) -> list[str]:
    return [str(r) for r in res.spec.get("requirements") or []]


def _secrets_of(ctx: Context, name: str) -> dict[str, str]:
    res = ctx.config.get("Environment", name)
    return ctx.secret_environment(_requirements(res)) if res is not None else {}


def _resolve(res: Resource, ctx: Context, python: str) -> list[str]:
    """`uv pip compile` of the requirements: one `name==version` (or URL) line per
    package. A secret's value never enters the lock: it stays ${MLINFRA_SECRET_X}."""
    interpreter = find_python(python)
    if interpreter is None:
        raise ProviderError(res.address, f"Python {python} is not installed")
    requirements = _requirements(res)
    secrets = ctx.secret_environment(requirements)
    with tempfile.TemporaryDirectory(prefix="mlinfra-lock-") as tmp:
        listing = Path(tmp) / "requirements.in"
        lines = [sensitive.as_env_references(r) if sensitive.holds(r) else r
                 for r in requirements]
        if res.spec.get("requirements_file"):
            lines.append(f"-r {ctx.root / str(res.spec['requirements_file'])}")
        listing.write_text("".join(line + "\n" for line in lines))
        done = _run_uv(["pip", "compile", "--quiet", "--no-header", "--no-annotate",
                        "--python", interpreter, str(listing)], secrets=secrets)
    if done.returncode != 0:
        raise ProviderError(res.address, "cannot resolve the requirements:\n"
                            + sensitive.redact(shorten(done.stderr), secrets))
    locked = []
    for line in done.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        for name, value in secrets.items():
            if value:
                line = line.replace(value, "${" + name + "}")
        locked.append(line)
    return locked


def _runs(folder: Path) -> bool:
    """The venv's interpreter is there and can be started (its link may point at a
    Python that was removed)."""
    python = folder / "bin" / "python"
    return os.access(python, os.X_OK) and python.resolve().exists()


def _marker(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MARKER).read_text())["env_hash"])
    except (OSError, ValueError, KeyError):
        return None
