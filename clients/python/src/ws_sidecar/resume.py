"""A subscription's position kept in a file the app names, so a restarted app resumes where it
left off. The file holds `{"endpoint": NAME, "seq": N}`: the last seq the app was done with.

Writes go to a temporary file in the same directory that then replaces the old one, so a
crash leaves either the old or the new position, never a torn file. Intermediate positions
are not fsynced (one fsync per message would cap a feed at the disk's fsync rate); the final
one, when the subscription is closed, is. After a power loss the file may therefore hold an
older position: the app then sees some messages again, never misses one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ResumeFileError


class ResumeFile:
    """One endpoint's position in one file."""

    def __init__(self, path: str | os.PathLike[str], endpoint: str) -> None:
        self.path = Path(path)
        self.endpoint = endpoint
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        parent = self.path.parent
        if not parent.is_dir():
            raise ResumeFileError(f"{self.path}: directory {parent} does not exist")

    def load(self) -> int | None:
        """The stored seq, or None when the file does not exist yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise ResumeFileError(f"{self.path}: cannot read resume file: {e}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ResumeFileError(
                f'{self.path}: not a resume file (expected {{"endpoint": …, "seq": …}}): {e}'
            ) from None
        if not isinstance(doc, dict):
            raise ResumeFileError(
                f'{self.path}: not a resume file (expected {{"endpoint": …, "seq": …}})'
            )
        seq, endpoint = doc.get("seq"), doc.get("endpoint")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ResumeFileError(f"{self.path}: seq must be a non-negative integer, got {seq!r}")
        if endpoint != self.endpoint:
            raise ResumeFileError(
                f"{self.path}: holds a position of endpoint {endpoint!r}, not {self.endpoint!r}"
            )
        return seq

    def store(self, seq: int, durable: bool = False) -> None:
        """Replaces the stored position with `seq`; `durable` also fsyncs it."""
        data = json.dumps({"endpoint": self.endpoint, "seq": seq}).encode() + b"\n"
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
            if durable:
                dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            raise ResumeFileError(f"{self.path}: cannot write resume file: {e}") from None
