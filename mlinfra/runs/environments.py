"""Where a run's environment lives on this machine: a virtual environment in the user's
cache, named by the hash of its spec (`mlinfra/providers/local/environment.py` builds
it)."""

from __future__ import annotations

import sys
from pathlib import Path

from mlinfra import cache_dir

# The Python an Environment gets when it names none: the one running mlinfra.
CURRENT_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def env_dir(spec_hash: str) -> Path:
    return cache_dir() / "envs" / spec_hash[:16]
