"""The blob store every process uses, from the settings: the store directory, or an S3 bucket behind a local cache."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from models_store.blobs import Blobs, CachedBlobs, LocalBlobs, S3Blobs, check_key
from models_store.errors import StoreError
from unlearnd.settings import Settings

BUCKET_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


def open_blobs(settings: Settings) -> Blobs:
    """`UNLEARND_STORE_URL` unset: files in the store directory. `s3://bucket/prefix`: that bucket (at
    `UNLEARND_S3_ENDPOINT_URL`, if set) read through `<data_dir>/cache`, bounded by `UNLEARND_CACHE_MAX_BYTES`."""
    if not settings.store_url:
        return LocalBlobs(settings.store_dir)
    url = urlsplit(settings.store_url)
    prefix = url.path.strip("/")
    if url.scheme != "s3" or not BUCKET_PATTERN.match(url.netloc) or url.query or url.fragment or not _is_key(prefix):
        # The value is not echoed: it may hold a secret.
        raise ValueError("UNLEARND_STORE_URL must be unset or s3://bucket/prefix (a bucket name, no credentials, "
                         "then optional path parts not starting with '.')")
    remote = S3Blobs(url.netloc, prefix, endpoint_url=settings.s3_endpoint_url)
    return CachedBlobs(remote, settings.cache_dir, settings.cache_max_bytes)


def _is_key(prefix: str) -> bool:
    """Whether `prefix` is empty or a valid blob key (what S3Blobs puts in front of every key)."""
    try:
        check_key(prefix)
    except StoreError:
        return not prefix
    return True
