"""Blob stores: files under a directory, keys, and the verified LRU cache in front of a remote (here a directory)."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from models_store.blobs import CachedBlobs, LocalBlobs, S3Blobs, content_sha256
from models_store.errors import IntegrityError, NotFoundError, StoreError
from models_store.files import sha256_bytes
from unlearnd.blobs import open_blobs
from unlearnd.settings import Settings


def _weights_key(data: bytes) -> str:
    return f"models/m/weights/{sha256_bytes(data)}.safetensors"


def _cached(tmp_path, max_bytes=10_000):
    remote = LocalBlobs(tmp_path / "remote")
    return remote, CachedBlobs(remote, tmp_path / "cache", max_bytes)


def test_local_blobs_round_trip_in_the_store_layout(tmp_path):
    blobs = LocalBlobs(tmp_path)
    key = _weights_key(b"weights")
    assert not blobs.exists(key)
    blobs.put(key, b"weights")
    assert (tmp_path / key).read_bytes() == b"weights"
    assert blobs.exists(key) and blobs.get(key) == b"weights"
    blobs.delete(key)
    blobs.delete(key)  # idempotent
    assert not blobs.exists(key)
    with pytest.raises(NotFoundError):
        blobs.get(key)
    with pytest.raises(NotFoundError):
        blobs.get("models/m")  # a directory is no blob


def test_local_put_of_the_same_bytes_leaves_the_file_alone_and_other_bytes_replace_it(tmp_path):
    blobs = LocalBlobs(tmp_path)
    blobs.put("reports/fr_1.png", b"png")
    inode = (tmp_path / "reports/fr_1.png").stat().st_ino
    blobs.put("reports/fr_1.png", b"png")
    assert (tmp_path / "reports/fr_1.png").stat().st_ino == inode
    blobs.put("reports/fr_1.png", b"gif")
    assert blobs.get("reports/fr_1.png") == b"gif"


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../b", "a/./b", "a//b", "a/", "a\\b", ".hidden",
                                 "a/.tmp", "a\0b"])
def test_keys_that_are_not_plain_relative_paths_are_refused(tmp_path, key):
    remote, cached = _cached(tmp_path)
    for blobs in (remote, cached):
        with pytest.raises(StoreError, match="invalid blob key"):
            blobs.put(key, b"x")
        with pytest.raises(StoreError, match="invalid blob key"):
            blobs.get(key)
        with pytest.raises(StoreError, match="invalid blob key"):
            blobs.exists(key)
        with pytest.raises(StoreError, match="invalid blob key"):
            blobs.delete(key)
    assert not any(tmp_path.rglob("*"))


def test_content_sha256_is_read_from_the_file_name_only():
    digest = "ab" * 32
    assert content_sha256(f"models/m/weights/{digest}.safetensors") == digest
    assert content_sha256(f"models/m/torchscript/{digest}.pt") == digest
    assert content_sha256(f"datasets/d/{digest}") == digest
    assert content_sha256(f"models/{digest}/model.safetensors") is None
    assert content_sha256("artifacts/forget_vector-0123456789abcdef.safetensors") is None
    assert content_sha256(f"reports/{'AB' * 32}.png") is None


def test_cache_reads_through_once_and_writes_to_the_remote_first(tmp_path):
    remote, cached = _cached(tmp_path)
    key = _weights_key(b"w1")
    remote.put(key, b"w1")
    assert cached.get(key) == b"w1"
    assert (tmp_path / "cache" / key).read_bytes() == b"w1"
    remote.delete(key)
    assert cached.get(key) == b"w1" and cached.exists(key)  # served from the cache

    cached.put("artifacts/a-1.safetensors", b"delta")
    assert remote.get("artifacts/a-1.safetensors") == b"delta"
    assert (tmp_path / "cache" / "artifacts/a-1.safetensors").read_bytes() == b"delta"
    cached.delete("artifacts/a-1.safetensors")
    assert not remote.exists("artifacts/a-1.safetensors") and not cached.exists("artifacts/a-1.safetensors")
    with pytest.raises(NotFoundError):
        cached.get("artifacts/a-1.safetensors")


def test_least_recently_used_blobs_are_evicted_beyond_the_bound(tmp_path):
    remote, cached = _cached(tmp_path, max_bytes=250)
    a, b, c = (bytes([n]) * 100 for n in (1, 2, 3))
    cached.put(_weights_key(a), a)
    cached.put(_weights_key(b), b)
    assert cached.get(_weights_key(a)) == a  # a is now used more recently than b
    cached.put(_weights_key(c), c)
    cache = tmp_path / "cache"
    assert (cache / _weights_key(a)).exists() and (cache / _weights_key(c)).exists()
    assert not (cache / _weights_key(b)).exists()
    assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) <= 250
    assert cached.get(_weights_key(b)) == b  # fetched again from the remote, evicting a
    assert not (cache / _weights_key(a)).exists()


def test_a_blob_larger_than_the_cache_is_served_but_not_cached(tmp_path):
    remote, cached = _cached(tmp_path, max_bytes=10)
    big = b"x" * 11
    cached.put(_weights_key(big), big)
    assert remote.get(_weights_key(big)) == big and cached.get(_weights_key(big)) == big
    assert not (tmp_path / "cache" / _weights_key(big)).exists()


def test_a_damaged_cache_file_is_deleted_and_fetched_again(tmp_path):
    remote, cached = _cached(tmp_path)
    key = _weights_key(b"good weights")
    cached.put(key, b"good weights")
    (tmp_path / "cache" / key).write_bytes(b"bad weights!")
    assert cached.get(key) == b"good weights"
    assert (tmp_path / "cache" / key).read_bytes() == b"good weights"


def test_damaged_remote_bytes_raise_and_are_not_cached(tmp_path):
    remote, cached = _cached(tmp_path)
    key = _weights_key(b"good weights")
    (tmp_path / "remote" / key).parent.mkdir(parents=True)
    (tmp_path / "remote" / key).write_bytes(b"bad weights!")
    with pytest.raises(IntegrityError, match="does not match the sha256"):
        cached.get(key)
    assert not (tmp_path / "cache" / key).exists()


def test_bytes_are_never_stored_under_another_sha256(tmp_path):
    remote, cached = _cached(tmp_path)
    with pytest.raises(IntegrityError):
        cached.put(_weights_key(b"one"), b"two")
    assert not remote.exists(_weights_key(b"one"))


def test_eviction_removes_stale_temp_files_and_spares_those_being_written(tmp_path):
    remote, cached = _cached(tmp_path)
    stale, fresh = tmp_path / "cache" / "artifacts" / ".a.1.tmp", tmp_path / "cache" / "artifacts" / ".b.2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a dead process")
    fresh.write_bytes(b"being written")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    cached.put("artifacts/a.safetensors", b"delta")
    assert not stale.exists() and fresh.exists()


def _hammer(cache_dir, remote_dir, seed, errors):
    try:
        remote = LocalBlobs(remote_dir)
        cached = CachedBlobs(remote, cache_dir, max_bytes=3_000)
        blobs = [bytes([n]) * 500 for n in range(12)]
        for i in range(60):
            data = blobs[(i * 7 + seed) % len(blobs)]
            if cached.get(_weights_key(data)) != data:
                errors.put("wrong bytes")
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(repr(exc))


def test_processes_sharing_one_cache_directory_always_read_the_right_bytes(tmp_path):
    remote = LocalBlobs(tmp_path / "remote")
    for n in range(12):
        remote.put(_weights_key(bytes([n]) * 500), bytes([n]) * 500)
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    workers = [context.Process(target=_hammer, args=(tmp_path / "cache", tmp_path / "remote", seed, errors))
               for seed in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert errors.empty()
    assert sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file()) <= 3_000


def test_open_blobs_without_a_store_url_uses_the_store_directory(tmp_path):
    blobs = open_blobs(Settings(data_dir=tmp_path))
    assert isinstance(blobs, LocalBlobs) and blobs.root == tmp_path / "store"


def test_open_blobs_with_an_s3_url_reads_the_bucket_through_the_cache(tmp_path, fake_aws_env):
    settings = Settings(data_dir=tmp_path, store_url="s3://bucket-1/deploy/a/", s3_endpoint_url="http://127.0.0.1:9",
                        cache_max_bytes=2**20)
    blobs = open_blobs(settings)  # makes a client, sends nothing
    assert isinstance(blobs, CachedBlobs) and isinstance(blobs.remote, S3Blobs)
    assert (blobs.remote.bucket, blobs.remote.prefix, blobs.remote.endpoint_url) == (
        "bucket-1", "deploy/a", "http://127.0.0.1:9")
    assert (blobs.cache_dir, blobs.max_bytes) == (tmp_path / "cache", 2**20)
    assert blobs.url == "s3://bucket-1/deploy/a at http://127.0.0.1:9"


@pytest.mark.parametrize("url", ["gs://bucket/prefix", "/var/store", "s3://", "s3:///prefix", "s3://b/p?x=1",
                                 "s3://user:secret@bucket/p", "s3://bucket/../p"])
def test_open_blobs_refuses_other_urls_naming_the_setting(tmp_path, url, fake_aws_env):
    with pytest.raises(ValueError, match="UNLEARND_STORE_URL"):
        open_blobs(Settings(data_dir=tmp_path, store_url=url))
