"""Which files of a project are left out, by Git's own rules for ignore files.

Each ignore file (`.gitignore`, `.mlinfraignore`) applies to its folder and everything
below it, with patterns relative to that folder; a deeper file's verdict overrides a
shallower one's, a later line an earlier one. Matching is pathspec's implementation of
gitignore: `!` re-includes, a leading or inner `/` anchors to the file's folder, a
trailing `/` matches folders only, `**` spans folders. As in Git, a file inside an
ignored folder cannot be re-included: walkers prune ignored folders.

Only ignore files inside the project count, not those of folders above it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


class IgnoreRules:
    """The ignore files named `names` under `root`, read once per folder when first
    needed. Paths are relative to `root`, with `/` separators."""

    def __init__(self, root: Path, names: tuple[str, ...]) -> None:
        self.root = root
        self.names = names
        self._specs: dict[str, Any] = {}

    def _spec(self, folder: str) -> Any:
        """The compiled patterns of `folder`'s ignore files (None when it has none)."""
        if folder not in self._specs:
            lines: list[str] = []
            for name in self.names:
                path = self.root / folder / name
                if path.is_file():
                    lines += path.read_text(errors="replace").splitlines()
            spec = None
            if any(line.strip() and not line.startswith("#") for line in lines):
                # NOTE: imported here: most projects have no ignore file to compile, and
                # every plan walks the project's folders.
                import pathspec

                spec = pathspec.GitIgnoreSpec.from_lines([
                    line for line in lines if _valid(pathspec.GitIgnoreSpec, line)])
            self._specs[folder] = spec
        return self._specs[folder]

    def ignored(self, rel: str, is_dir: bool = False) -> bool:
        """Whether the file (or with `is_dir`, the folder) at `rel` is ignored."""
        parts = [p for p in rel.split("/") if p and p != "."]
        for depth in range(len(parts) - 1, -1, -1):
            spec = self._spec("/".join(parts[:depth]))
            if spec is None:
                continue
            verdict = spec.check_file("/".join(parts[depth:]) + ("/" if is_dir else "")).include
            if verdict is not None:
                return bool(verdict)
        return False


def _valid(spec: Any, line: str) -> bool:
    """Whether pathspec can compile the line; Git passes over a line it cannot use (a
    lone `!`, a bad range), and so does mlinfra."""
    try:
        spec.from_lines([line])
    except (ValueError, re.error):
        return False
    return True
