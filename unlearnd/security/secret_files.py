"""Secrets kept in the data directory (generated once, mode 600) and the non-secret id that names a key."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def read_or_create_secret_file(path: Path, generate: Callable[[], str]) -> str:
    """The text of `path`; when the file is missing, first write `generate()` there, owner-only (600).

    Processes starting at once agree: each writes a private temporary file and hard-links it into place,
    which only the first one manages; all of them then read the winner's secret.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate())
        try:
            os.link(tmp, path)  # fails if another process created the file first; theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text()


def key_id(key: str | bytes) -> str:
    """A non-secret id of a key for logs, audit and receipts: the first 12 hex digits of its sha256."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()[:12]
