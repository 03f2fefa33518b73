"""A real S3 HTTP server for the tests (moto's, on a free loopback port) and a fresh prefix of its bucket per test.

Loaded as a plugin by tests/conftest.py, so every test may ask for `s3_server`, `s3_location` or `fake_aws_env`.
Only fake credentials are ever set; anything that could make boto3 find real ones (profiles, config files, the
instance metadata service) is switched off.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

BUCKET = "unlearnd-test"
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""What a process talking to the test server needs in its environment (child processes too)."""
UNSET_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str


@dataclass(frozen=True)
class S3Location:
    """One test's part of the server: a prefix of its bucket nobody else writes to."""

    endpoint_url: str
    bucket: str
    prefix: str

    @property
    def store_url(self) -> str:
        """The value of UNLEARND_STORE_URL for this location (with UNLEARND_S3_ENDPOINT_URL = endpoint_url)."""
        return f"s3://{self.bucket}/{self.prefix}"


def fake_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in UNSET_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS credentials in this test's environment, nothing that could lead boto3 to real ones."""
    fake_aws_environment(monkeypatch)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 for the whole session, with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        with pytest.MonkeyPatch.context() as monkeypatch:
            fake_aws_environment(monkeypatch)
            boto3.session.Session().client("s3", endpoint_url=endpoint_url).create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint_url, BUCKET)
    finally:
        server.stop()


@pytest.fixture
def s3_location(s3_server: S3Server, fake_aws_env: None) -> S3Location:
    """A fresh prefix of the test bucket, with fake credentials in the environment for this test."""
    return S3Location(s3_server.endpoint_url, s3_server.bucket, f"test-{uuid.uuid4().hex[:12]}")
