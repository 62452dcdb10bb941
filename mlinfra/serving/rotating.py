"""A file that every worker of a server appends lines to, bounded by size.

When the file passes `max_bytes` it becomes NAME.1.EXT (NAME.1.EXT becomes NAME.2.EXT,
and so on; the oldest of `backups` goes), so the files never hold much more than
(backups + 1) x max_bytes. Each worker buffers its lines and writes them in one
write(2) to a file opened with O_APPEND, so lines of different workers never
interleave; rotation happens under an exclusive lock (flock on NAME.EXT.lock), and a
worker that finds the file was rotated by another reopens it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

FLUSH_BYTES = 64 << 10  # written at once when this much is buffered, else at flush()


def numbered(path: Path, index: int) -> Path:
    """The `index`-th older file of `path`: access.log -> access.1.log."""
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


class RotatingFile:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self._fd: int | None = None
        self._inode = 0
        self._buffer = bytearray()

    def write(self, line: bytes) -> None:
        """Append one whole line (buffered)."""
        self._buffer += line
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered. A file that cannot be written (disk full, folder
        removed) loses those lines rather than stopping the server."""
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            fd = self._current()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if os.fstat(fd).st_size >= self.max_bytes:
                self._rotate()
        except OSError:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _current(self) -> int:
        """The open file at `path`, reopened when another worker rotated it away."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = -1
        if self._fd is None or inode != self._inode:
            self.close()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._inode = os.fstat(self._fd).st_ino
        return self._fd

    def _rotate(self) -> None:
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # released when closed
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                return
            if current.st_size < self.max_bytes:
                return  # another worker rotated it first
            for index in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(numbered(self.path, index), numbered(self.path, index + 1))
            os.replace(self.path, numbered(self.path, 1))
            # The newest file is always there, empty until the next line, as logrotate's
            # `create` leaves it: a reader never finds the log gone after a rotation.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644))
        self.close()
