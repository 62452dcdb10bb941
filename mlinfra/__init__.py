"""mlinfra: Terraform-style declarative MLOps.

A project declares its machine-learning estate in YAML; `mlinfra plan` shows what
would change and `mlinfra apply` makes it so through a provider.
"""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_dir() -> Path:
    """Where what is shared between projects on this machine lives: environments, and
    the table of Great Expectations' expectations that validate checks against."""
    base = os.environ.get("MLINFRA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlinfra")
    return Path(base)
