"""Pinned requirements for the rendered images, so an image tagged by the hash of its
context installs the same packages every time it is built.

An Environment's requirements are pinned from its lock in the state (`lock`, every
package and version its last apply resolved) when it has one; otherwise from what uv
resolves now for the image's Python on Linux x86_64 (`uv pip compile`), cached by the
requirements' hash. Requirements that hold a secret (a private index's token) are left
as written, and so are those uv cannot resolve here (no package index): each case is
a note that `render` prints.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from mlinfra.spec import sensitive
from mlinfra.spec.model import Config, Resource

PLATFORM = "x86_64-manylinux_2_28"


def requirement_lines(config: Config, env: Resource) -> list[str]:
    lines = [str(r) for r in env.spec.get("requirements") or []]
    if env.spec.get("requirements_file"):
        path = config.root / str(env.spec["requirements_file"])
        lines += [line.strip() for line in path.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    return lines


def environment_locks(config: Config, store: Any) -> tuple[dict[str, list[str]], list[str]]:
    """Environment name -> its pinned requirements; and the notes on those left
    unpinned."""
    states = store.resources() if store is not None else {}
    locks: dict[str, list[str]] = {}
    notes: list[str] = []
    for env in config.of("Environment").values():
        wanted = requirement_lines(config, env)
        if not wanted:
            locks[env.name] = []
            continue
        have = states.get(env.address)
        lock = have.attributes.get("lock") if have is not None else None
        if isinstance(lock, list) and lock:
            locks[env.name] = [str(line) for line in lock]
            continue
        if sensitive.holds(wanted):
            notes.append(f"{env.address}: its requirements hold a secret, so the image "
                         "installs them as written (not pinned)")
            continue
        python = str(env.spec.get("python") or "3.11")
        resolved, why = _compile(wanted, python)
        if resolved is None:
            notes.append(f"{env.address}: requirements not pinned: uv could not resolve them "
                         f"here ({why})")
            continue
        locks[env.name] = resolved
        notes.append(f"{env.address}: no lock in the state yet, so its image's requirements "
                     f"are pinned from what uv resolves now for Python {python} on Linux "
                     f"x86_64 ({len(resolved)} packages)")
    return locks, notes


def _cache() -> Path:
    from mlinfra import cache_dir

    return Path(cache_dir()) / "locks"


def _compile(lines: list[str], python: str) -> tuple[list[str] | None, str]:
    text = "".join(line + "\n" for line in lines)
    key = hashlib.sha256(f"{python}\n{PLATFORM}\n{text}".encode()).hexdigest()[:24]
    cached = _cache() / f"{key}.txt"
    if cached.is_file():
        return cached.read_text().splitlines(), ""
    from mlinfra.providers.local.environment import uv_bin

    try:
        done = subprocess.run(
            [uv_bin(), "pip", "compile", "--quiet", "--no-header", "--no-annotate",
             "--python-version", python, "--python-platform", PLATFORM, "-"],
            input=text, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["uv failed"])[-1]
    pinned = [line.strip() for line in done.stdout.splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in pinned))
    os.replace(tmp, cached)
    return pinned, ""
