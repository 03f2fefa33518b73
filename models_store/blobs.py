"""Immutable blobs (weights, TorchScript archives, dataset and artifact tensors, report PNGs) by key, in a local
directory or an S3-compatible object store, read on other hosts through a bounded, verified local cache.

Keys are relative POSIX paths, written once and never changed afterwards (a second write with other bytes
replaces the first, but no caller does that); a key whose file name is a sha256 names its content:

    models/<name>/weights/<sha256>.safetensors      models/<name>/torchscript/<sha256>.pt
    datasets/<name>/<sha256>.safetensors            artifacts/<id>.safetensors        reports/<request_id>.png

Torch-free; boto3 is imported only when an S3 client is made.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from models_store.errors import IntegrityError, NotFoundError, StoreError
from models_store.files import atomic_write_bytes, sha256_bytes

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
STALE_TEMP_S = 3600.0
"""A cache temp file older than this was left by a process that died while writing it: eviction removes it."""


class BlobStoreError(Exception):
    """The object store failed or refused a request (after botocore's retries): unreachable, bad credentials,
    missing bucket. Not a StoreError: nothing the caller sent is wrong (the API answers 503)."""


class Blobs(Protocol):
    """Where blobs live. Every method takes a key that `check_key` accepts."""

    @property
    def url(self) -> str:
        """Where the blobs are, for logs (never credentials)."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically (readers see nothing or all of it); a no-op when the same bytes
        are stored there already."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under `key`; NotFoundError when there are none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens when it is absent."""
        ...


def check_key(key: str) -> str:
    """`key` when it is a relative POSIX path of non-empty parts none of which starts with '.' (so no '..'),
    without backslashes or NUL; StoreError otherwise."""
    if "\\" in key or "\0" in key or any(not part or part.startswith(".") for part in key.split("/")):
        raise StoreError(f"invalid blob key {key!r}: use a relative path of non-empty parts not starting with '.'")
    return key


def content_sha256(key: str) -> str | None:
    """The sha256 a key names (its file name without suffixes is 64 lowercase hex digits), or None."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return stem if SHA256_HEX.match(stem) else None


class LocalBlobs:
    """Blobs as files under `root` (the store directory's layout: `root / key`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def url(self) -> str:
        return self.root.absolute().as_uri()

    def __repr__(self) -> str:
        return f"LocalBlobs({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with contextlib.suppress(OSError):
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return
        atomic_write_bytes(path, data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"no blob {key!r} in {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)


@functools.cache
def _s3_client(endpoint_url: str | None, pid: int) -> Any:
    """One S3 client per process and endpoint (`pid` is part of the cache key: a client must not cross a fork,
    and RQ forks a work-horse per job). Credentials come from boto3's usual chain (AWS_* variables first)."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    session = boto3.session.Session()
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
        # Content-MD5 (below) is what every S3-compatible server checks; the newer CRC trailers are not.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1",
                          config=config)


class S3Blobs:
    """Blobs as objects `<prefix>/<key>` in an S3 bucket (AWS or any S3-compatible server at `endpoint_url`).

    Each object carries its sha256 as user metadata: `put` skips bytes stored already, `get` refuses bytes that
    do not match it (IntegrityError). Uploads send Content-MD5, so the server refuses a body damaged on the way.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None):
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.client = client if client is not None else _s3_client(endpoint_url, os.getpid())

    @property
    def url(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def __repr__(self) -> str:
        return f"S3Blobs({self.url!r})"

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    @contextlib.contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        """botocore's errors in `operation` on `key` as NotFoundError (no such object) or BlobStoreError."""
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            yield
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NotFound", "404"):
                raise NotFoundError(f"no blob {key!r} in {self.url}") from None
            raise BlobStoreError(f"object store {self.url} refused {operation} of {key!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"object store {self.url} failed {operation} of {key!r}: {exc}") from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HeadObject answer, or None when there is no object under `key`."""
        try:
            with self._errors("HeadObject", key):
                head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except NotFoundError:
            return None
        return head

    def put(self, key: str, data: bytes) -> None:
        digest = sha256_bytes(data)
        head = self._head(key)
        if head is not None and head.get("Metadata", {}).get("sha256") == digest:
            return
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        with self._errors("PutObject", key):
            self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data, ContentMD5=md5,
                                   Metadata={"sha256": digest})

    def get(self, key: str) -> bytes:
        with self._errors("GetObject", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            with contextlib.closing(response["Body"]) as body:
                data: bytes = body.read()
        claimed = response.get("Metadata", {}).get("sha256")
        if claimed is not None and sha256_bytes(data) != claimed:
            raise IntegrityError(f"blob {key!r} in {self.url} does not match the sha256 stored with it")
        return data

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        with self._errors("DeleteObject", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))


class CachedBlobs:
    """`remote` read through a local cache directory of at most `max_bytes`.

    Bytes under a key that names a sha256 are checked against it when fetched (IntegrityError: the remote copy
    is damaged) and when served from the cache (a damaged cache file is deleted and fetched again). Writes go to
    the remote first, then the cache. Least recently used files (by mtime, set on every hit) are evicted beyond
    `max_bytes`; a blob larger than that is not cached. Several processes may share one cache directory: files
    appear by atomic rename and a file evicted while read stays readable. Deletes reach this cache and the
    remote, not other hosts' caches (blobs are immutable; a delete removes what nothing refers to any more).
    """

    def __init__(self, remote: Blobs, cache_dir: Path, max_bytes: int):
        self.remote = remote
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes

    @property
    def url(self) -> str:
        return self.remote.url

    def __repr__(self) -> str:
        return f"CachedBlobs({self.remote!r}, cache {str(self.cache_dir)!r}, {self.max_bytes} bytes)"

    def _path(self, key: str) -> Path:
        return self.cache_dir / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        expected = content_sha256(check_key(key))
        if expected is not None and sha256_bytes(data) != expected:
            raise IntegrityError(f"refusing to store bytes with another sha256 under {key!r}")
        self.remote.put(key, data)
        self._keep(key, data)

    def get(self, key: str) -> bytes:
        path, expected = self._path(key), content_sha256(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        else:
            if expected is None or sha256_bytes(data) == expected:
                _touch(path)
                return data
            path.unlink(missing_ok=True)
        data = self.remote.get(key)
        if expected is not None and sha256_bytes(data) != expected:
            raise IntegrityError(f"blob {key!r} in {self.remote.url} does not match the sha256 its key names")
        self._keep(key, data)
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file() or self.remote.exists(key)

    def delete(self, key: str) -> None:
        self.remote.delete(key)
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    def _keep(self, key: str, data: bytes) -> None:
        """Put `data` in the cache (unless it alone exceeds the bound), then evict down to the bound."""
        if len(data) > self.max_bytes:
            return
        path = self._path(key)
        atomic_write_bytes(path, data)
        _touch(path)
        self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used files until the cache holds at most `max_bytes` (never `keep`, nor
        another process's temp file unless it is stale)."""
        now = time.time()
        files = sorted(_cache_files(self.cache_dir))
        total = sum(size for _, size, _ in files)
        for mtime, size, path in files:
            if path == keep or (total <= self.max_bytes and not _is_temp(path)):
                continue
            if _is_temp(path) and now - mtime <= STALE_TEMP_S:
                continue
            path.unlink(missing_ok=True)
            total -= size


def _touch(path: Path) -> None:
    """Mark `path` used now (nanoseconds: file systems' own clock ticks are coarser than cache hits)."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):
        os.utime(path, ns=(now, now))


def _is_temp(path: Path) -> bool:
    """A temp file of `atomic_write_bytes` (keys never have a part starting with '.')."""
    return path.name.startswith(".")


def _cache_files(root: Path) -> Iterator[tuple[float, int, Path]]:
    """(mtime, size, path) of every file under `root`, skipping those that vanish while listed."""
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            yield stat.st_mtime, stat.st_size, path
