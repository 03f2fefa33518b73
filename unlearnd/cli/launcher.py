"""`unlearnd run`: everything in one foreground command, supervised; Ctrl-C stops all of it."""

from __future__ import annotations

import os
import signal
import sys
import time

import structlog

from unlearnd.cli.processes import (
    Child,
    DataDirInUse,
    api_child,
    janitor_child,
    lock_data_dir,
    redis_child,
    reset_metrics_dir,
    wait_for_redis,
    worker_child,
)
from unlearnd.logs import configure_logging
from unlearnd.security.api_keys import load_or_create_api_keys
from unlearnd.security.signing import open_store, unsigned_documents
from unlearnd.settings import Settings

RESTART_BACKOFF_S = (0.5, 1, 2, 5)
"""Wait before restarting a child that died: grows with consecutive quick deaths, capped at the last value."""

log = structlog.stdlib.get_logger(__name__)


def _banner(settings: Settings, keys: dict[str, str], model: str | None) -> str:
    by_role = {role: key for key, role in keys.items()}
    base = f"http://{settings.host}:{settings.port}"
    lines = [
        "", f"unlearnd is up: API {base}  (docs: {base}/docs)",
        f"  data directory: {settings.data_dir.resolve()}",
        f"  redis: {settings.effective_redis_url}" + ("" if settings.redis_url else " (embedded)"),
        f"  logs ({settings.log_format}, one line per event): {(settings.data_dir / 'logs').resolve()}/"
        "{api,worker-N,janitor,redis}.log",
        "  queue: `make dashboard` (rq-dashboard), GET /v1/admin/queue (admin key)",
        "  API keys (Authorization: Bearer <key>):",
        *[f"    {role:<10} {key}" for role, key in sorted(by_role.items())],
    ]
    if model:
        gov, inf = by_role.get("governance", "<governance key>"), by_role.get("inference", "<inference key>")
        zeros = "[[" + ",".join(["[" + ",".join(["0.0"] * 8) + "]"] * 8) + "]]"
        lines += [
            "", "  forget class 3 of the demo model:",
            f"    curl -s -X POST {base}/v1/models/{model}/forget-requests -H 'Authorization: Bearer {gov}' "
            "-H 'Content-Type: application/json' -d '{\"classes\": [3], \"reason\": \"demo\"}'",
            "  poll it:", f"    curl -s {base}/v1/forget-requests/<id> -H 'Authorization: Bearer {gov}'",
            "  predict:",
            f"    curl -s -X POST {base}/v1/models/{model}/predict -H 'Authorization: Bearer {inf}' "
            f"-H 'Content-Type: application/json' -d '{{\"inputs\": [{zeros}]}}'",
        ]
    lines.append("Ctrl-C stops everything.\n")
    return "\n".join(lines)


def unsigned_store_notice(settings: Settings) -> str | None:
    """One line telling to run `unlearnd adopt-store` when the store holds states or manifests written before
    signing (the service refuses them); None otherwise. Never adopts: that would sign whatever is there."""
    first = next(unsigned_documents(open_store(settings)), None)
    if first is None:
        return None
    return (f"unlearnd run: the store holds unsigned served states or artifact manifests (written before signing, "
            f"e.g. {first}), which the service refuses (503 \"not signed\"): "
            "check and sign them with `unlearnd adopt-store` (same UNLEARND_* settings)")


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; 0 then. 1 when another launcher holds the data directory. Every child
    dies with the launcher, even when it is killed with -9."""
    configure_logging(settings, "launcher")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock_fd = lock_data_dir(settings.data_dir)
    except DataDirInUse as exc:
        print(f"unlearnd run: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        return _run_locked(settings)
    finally:
        os.close(lock_fd)


def _run_locked(settings: Settings) -> int:
    keys = load_or_create_api_keys(settings)
    notice = unsigned_store_notice(settings)  # checked before this launcher writes anything (demo model)
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    reset_metrics_dir(settings)
    stopping = False

    def request_stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    redis = None if settings.redis_url else redis_child(settings)
    children: list[Child] = []
    try:
        if redis is not None:
            redis.log_path = log_dir / "redis.log"
            redis.start()
        wait_for_redis(settings)
        model_name = None
        if settings.demo_model:
            from unlearnd.demo import ensure_demo_model

            store = open_store(settings)  # signed with the server key, as every process's store
            model_name = ensure_demo_model(store, say=lambda line: print(line, flush=True))["name"]
        local_workers = settings.model_copy(update={"worker_metrics_port": None})  # the API's /metrics shows them
        children = [janitor_child(settings), *(worker_child(local_workers, i) for i in range(settings.workers)),
                    api_child(settings)]
        for child in children:
            child.log_path = log_dir / f"{child.name}.log"
            child.start()
        print(_banner(settings, keys, model_name), flush=True)
        if notice:
            print(notice, file=sys.stderr, flush=True)  # after the banner, where it is seen
        supervised = [c for c in [redis, *children] if c is not None]
        restart_at: dict[str, float] = {}
        while not stopping:
            now = time.monotonic()
            for child in supervised:
                if child.alive():
                    continue
                if child.name not in restart_at:  # just noticed: schedule a restart with backoff
                    quick = now - child.started_at < 10
                    child.restarts = child.restarts + 1 if quick else 1
                    wait = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S)) - 1]
                    log.warning("child exited; restarting", child=child.name, returncode=child.process.returncode,
                                restart_in_s=wait)
                    restart_at[child.name] = now + wait
                elif now >= restart_at[child.name]:
                    del restart_at[child.name]
                    child.start()
            time.sleep(0.2)
    finally:
        print("stopping...", flush=True)
        for child in reversed(children):
            child.stop()
        if redis is not None:
            redis.stop()
    return 0

