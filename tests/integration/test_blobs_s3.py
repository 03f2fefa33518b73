"""S3Blobs and CachedBlobs against a real S3 HTTP server (moto's, started by tests/s3_server.py)."""

from __future__ import annotations

import base64
import hashlib

import boto3
import pytest

from models_store.blobs import BlobStoreError, CachedBlobs, S3Blobs
from models_store.errors import IntegrityError, NotFoundError
from models_store.files import sha256_bytes
from unlearnd.blobs import open_blobs
from unlearnd.settings import Settings


def _weights_key(data: bytes) -> str:
    return f"models/m/weights/{sha256_bytes(data)}.safetensors"


@pytest.fixture
def client(s3_location):
    """A client of the test server of this test's own (so that event hooks see only this test's calls)."""
    return boto3.session.Session().client("s3", endpoint_url=s3_location.endpoint_url)


@pytest.fixture
def blobs(s3_location, client):
    return S3Blobs(s3_location.bucket, s3_location.prefix, endpoint_url=s3_location.endpoint_url, client=client)


def test_round_trip_under_the_prefix(blobs, s3_location, client):
    key = _weights_key(b"weights")
    assert not blobs.exists(key)
    blobs.put(key, b"weights")
    assert blobs.exists(key) and blobs.get(key) == b"weights"
    stored = client.head_object(Bucket=s3_location.bucket, Key=f"{s3_location.prefix}/{key}")
    assert stored["Metadata"] == {"sha256": sha256_bytes(b"weights")}
    blobs.delete(key)
    blobs.delete(key)  # idempotent
    assert not blobs.exists(key)
    with pytest.raises(NotFoundError):
        blobs.get(key)


def test_the_process_client_is_used_when_none_is_given(s3_location):
    blobs = S3Blobs(s3_location.bucket, s3_location.prefix, endpoint_url=s3_location.endpoint_url)
    assert blobs.client is S3Blobs(s3_location.bucket, "other", endpoint_url=s3_location.endpoint_url).client
    blobs.put("reports/fr_1.png", b"png")
    assert blobs.get("reports/fr_1.png") == b"png"


def test_uploads_carry_content_md5_and_the_same_bytes_are_uploaded_once(blobs, client):
    sent = []
    client.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request))
    blobs.put("artifacts/a-1.safetensors", b"delta")
    blobs.put("artifacts/a-1.safetensors", b"delta")
    assert len(sent) == 1
    assert sent[0].headers["Content-MD5"].decode() == base64.b64encode(hashlib.md5(b"delta").digest()).decode()
    blobs.put("artifacts/a-1.safetensors", b"other")
    assert len(sent) == 2 and blobs.get("artifacts/a-1.safetensors") == b"other"


def test_bytes_that_do_not_match_their_stored_sha256_are_refused(blobs, s3_location, client):
    key = _weights_key(b"good weights")
    client.put_object(Bucket=s3_location.bucket, Key=f"{s3_location.prefix}/{key}", Body=b"bad weights!",
                      Metadata={"sha256": sha256_bytes(b"good weights")})
    with pytest.raises(IntegrityError):
        blobs.get(key)


def test_a_missing_bucket_is_a_store_failure_not_a_missing_blob(s3_location, client):
    blobs = S3Blobs("no-such-bucket", "", endpoint_url=s3_location.endpoint_url, client=client)
    with pytest.raises(BlobStoreError, match="NoSuchBucket"):
        blobs.get("reports/fr_1.png")
    with pytest.raises(BlobStoreError):
        blobs.put("reports/fr_1.png", b"png")


def test_hosts_with_their_own_caches_see_each_others_writes(s3_location, tmp_path):
    settings = {"store_url": s3_location.store_url, "s3_endpoint_url": s3_location.endpoint_url}
    host_a = open_blobs(Settings(data_dir=tmp_path / "a", **settings))
    host_b = open_blobs(Settings(data_dir=tmp_path / "b", **settings))
    assert isinstance(host_a, CachedBlobs) and isinstance(host_b, CachedBlobs)
    key = _weights_key(b"weights")
    host_a.put(key, b"weights")
    assert host_b.exists(key) and host_b.get(key) == b"weights"
    assert (tmp_path / "b" / "cache" / key).read_bytes() == b"weights"
    host_b.put("artifacts/a-2.safetensors", b"delta")
    assert host_a.get("artifacts/a-2.safetensors") == b"delta"
    with pytest.raises(NotFoundError):
        host_a.get("reports/fr_missing.png")


def test_a_damaged_remote_blob_reaches_no_cache(s3_location, client, tmp_path):
    key = _weights_key(b"good weights")
    client.put_object(Bucket=s3_location.bucket, Key=f"{s3_location.prefix}/{key}", Body=b"bad weights!")
    remote = S3Blobs(s3_location.bucket, s3_location.prefix, endpoint_url=s3_location.endpoint_url, client=client)
    cached = CachedBlobs(remote, tmp_path / "cache", 2**20)
    with pytest.raises(IntegrityError):
        cached.get(key)
    assert not (tmp_path / "cache" / key).exists()
