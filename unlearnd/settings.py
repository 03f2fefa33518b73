"""Service settings from the environment (prefix UNLEARND_), shared by the API, workers and launcher."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNLEARND_", env_ignore_empty=True, extra="ignore")

    data_dir: Path = Field(Path(".unlearnd"),
                           description="Artifacts, models, datasets, ledger, keys, Redis files.")
    redis_url: str | None = Field(None, description="Use this Redis server; unset = start the embedded one.")
    api_keys: str | None = Field(
        None, description="'role:key' pairs, comma-separated (roles admin, governance, inference); "
        "unset = generated on first start and kept in <data_dir>/api_keys.json.")
    receipt_key: str | None = Field(
        None, description="HMAC-SHA256 key of older receipts (callbacks use webhook_secret; receipts are "
        "signed with the Ed25519 signing key); unset = generated on first start and kept in <data_dir>/receipt_key.")
    signing_key_file: Path | None = Field(
        None, description="Ed25519 private key (PEM) that signs served states, artifact manifests and receipts; "
        "unset = <data_dir>/signing_key.pem. Generated (mode 600) on first start if missing.")
    verify_interval_s: float = Field(
        60.0, ge=0, description="The API re-verifies the weights and artifacts it serves against the store at "
        "most this long after it last did, seconds (0 = on every prediction).")
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, description="Port the API listens on.")
    workers: int = Field(1, ge=1, description="RQ worker processes `unlearnd run` starts.")
    queue_name: str = Field("unlearnd", description="RQ queue name.")
    job_timeout_s: int = Field(3600, ge=10, description="RQ job timeout of one forget job, seconds.")
    max_attempts: int = Field(3, ge=1,
                              description="Attempts per request before it ends failed (crash retries).")
    worker_stale_s: float = Field(30.0, ge=6, description="A running job whose worker heartbeat (every 5 s) "
                                  "is older than this is considered lost and retried, seconds.")
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="A worker started on its own (`python -m workers`, e.g. on a host of "
        "its own) serves its and its work-horses' Prometheus metrics on this port (needs PROMETHEUS_MULTIPROC_DIR); "
        "unset = not served. `unlearnd run` leaves it unset: the API's /metrics shows its workers.")
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address of a worker's metrics endpoint (0.0.0.0: scraped from other hosts; "
        "keep it on an internal network).")
    callback_attempts: int = Field(8, ge=1, le=20, description="Delivery attempts per callback.")
    callback_retry_delays_s: str = Field(
        "5,300,1800,7200,18000,36000,36000", description="Comma-separated delays before attempts 2, 3, ... of a "
        "callback, seconds (each > 0, at most 7 days); the last one repeats when there are more attempts.")
    callback_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Total deadline of one callback delivery attempt (resolve, connect, "
        "send, read the answer), seconds.")
    callback_allow: str | None = Field(
        None, description="Comma-separated CIDRs, IP addresses or host names that callbacks may reach although "
        "they are not global (loopback, private, link-local…); unset = only global addresses.")
    webhook_secret: str | None = Field(
        None, description="Standard Webhooks signing secret of callbacks ('whsec_' + base64); unset = generated "
        "on first start and kept in <data_dir>/webhook_secret.")
    max_dataset_bytes: int = Field(256 * 1024 * 1024, ge=1024,
                                   description="Largest unpacked size of an uploaded .npz dataset, bytes.")
    device: str = Field("auto",
                        description="'auto' (CUDA when present), 'cpu' or 'cuda[:n]' for the workers.")
    demo_model: bool = Field(True, description="Train and register the digits demo model on first start.")
    max_predict_batch: int = Field(256, ge=1, description="Most images in one /predict call.")
    max_sample_ids: int = Field(100_000, ge=1, description="Most sample ids in one forget request.")
    guard_max_drop: float = Field(
        0.03, ge=0.0, le=1.0, description="Utility guard: most accuracy (fraction; 0.03 = 3 points) a candidate "
        "may lose on held-out data of the retained classes before it is refused.")
    gated_vectors: bool = Field(
        True, description="Serve class forget vectors gated: δ only on inputs the model assigns to a forgotten "
        "class (one extra forward pass for those inputs); false = universal δ on every input.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                description="Largest request body accepted, bytes.")
    idempotency_key_ttl_s: float = Field(
        86400.0, ge=60, le=366 * 86400, description="How long an Idempotency-Key is kept for replay, seconds; "
        "after that a request with the key is a new request, and the janitor deletes the key.")
    # Many hosts (docs/deploy.md): a shared database and blob store; every host keeps only caches locally.
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the database holding the ledger, audit log, idempotency keys, model "
        "and dataset records and served states (postgresql://user:pass@host/db); unset = SQLite in the data "
        "directory.")
    store_url: str | None = Field(
        None, description="Where immutable blobs (weights, TorchScript, dataset tensors, artifacts) live: "
        "s3://bucket/prefix (credentials from the usual AWS_* variables); unset = the local store directory.")
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible server (MinIO, Ceph, ...); unset = AWS S3.")
    cache_max_bytes: int = Field(
        4 * 1024**3, ge=1024 * 1024, description="Largest size of the local blob cache (<data_dir>/cache), bytes; "
        "least recently used blobs are evicted beyond it.")
    # Serving (docs/operations.md).
    api_workers: int = Field(1, ge=1, le=64, description="API processes (uvicorn workers) `unlearnd run` starts.")
    batch_max_size: int = Field(
        128, ge=1, le=4096, description="Dynamic batching: most images one forward pass gathers from concurrent "
        "predictions of one model.")
    batch_max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Dynamic batching: longest a prediction of a fast model waits for others "
        "to join its batch, milliseconds (a slow model's see UNLEARND_BATCH_WAIT_SHARE).")
    batch_wait_share: float = Field(
        0.1, ge=0, le=1, description="Dynamic batching: when a model's traffic is concurrent, a prediction also "
        "waits up to this share of the model's last forward pass for others to join (the longer of this and "
        "UNLEARND_BATCH_MAX_WAIT_MS): slow models fill their batches, fast ones are not held back.")
    channels_last_min_batch: int = Field(
        8, ge=0, le=4096, description="Forward passes of at least this many images run in channels-last memory "
        "layout (faster convolutions on CPU from about 8 images on; slower for single images), for models that "
        "give the same logits that way (tried when a state is loaded); 0 = never.")
    inference_threads: int = Field(
        0, ge=0, le=1024, description="Torch threads of each API process's inference thread; 0 = its share of "
        "the CPUs (divided by UNLEARND_API_WORKERS), at least 1; 1 on hosts whose cores other work keeps busy.")
    # Logs (docs/operations.md).
    log_format: str = Field("json", pattern="^(json|text)$",
                            description="'json' (one object per line) or 'text' (key=value) logs from every process.")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$", description="Lowest level logged.")
    access_log: bool = Field(True, description="Log one line per HTTP request (method, path, status, duration, "
                             "request id).")

    @field_validator("callback_allow")
    @classmethod
    def _callback_allow(cls, v: str | None) -> str | None:
        from unlearnd.callbacks import AllowList  # callbacks imports this module

        AllowList.parse(v)  # ValueError names the bad entry
        return v

    @field_validator("callback_retry_delays_s")
    @classmethod
    def _callback_retry_delays_s(cls, v: str) -> str:
        parse_delays(v)  # ValueError names the bad entry
        return v

    @property
    def callback_retry_delays(self) -> tuple[float, ...]:
        return parse_delays(self.callback_retry_delays_s)

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def embedded_redis_socket(self) -> Path:
        return self.redis_dir / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"unix://{self.embedded_redis_socket.resolve()}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


MAX_RETRY_DELAY_S = 7 * 24 * 3600.0


def parse_delays(text: str) -> tuple[float, ...]:
    """The delays of UNLEARND_CALLBACK_RETRY_DELAYS_S ("5,300,1800"), seconds; ValueError unless each is a
    number > 0 and at most MAX_RETRY_DELAY_S, and there is at least one."""
    delays = []
    for entry in text.split(","):
        try:
            delay = float(entry)
        except ValueError:
            raise ValueError(f"callback retry delay {entry.strip()!r} is not a number of seconds") from None
        if not 0 < delay <= MAX_RETRY_DELAY_S:  # also refuses nan
            raise ValueError(f"callback retry delay {entry.strip()!r} must be > 0 and at most "
                             f"{MAX_RETRY_DELAY_S:g} s")
        delays.append(delay)
    return tuple(delays)


@lru_cache
def get_settings() -> Settings:
    return Settings()
