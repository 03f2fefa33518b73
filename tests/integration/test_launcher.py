"""`unlearnd run` (what `make run` starts): serves, prints its keys, restarts a worker or Redis that dies, and
Ctrl-C leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from tests.integration.conftest import free_port


def test_run_serves_and_ctrl_c_stops_everything(embedded_stack):
    """`unlearnd run` with its embedded defaults."""
    stack = embedded_stack
    data_dir = Path(tempfile.mkdtemp(prefix="unlearnd-run-"))
    shutil.copytree(stack.settings.store_dir, data_dir / "store")  # reuse the trained demo model: its blobs
    with sqlite3.connect(stack.settings.ledger_path) as source, sqlite3.connect(data_dir / "ledger.sqlite3") as copy:
        source.backup(copy)  # and its records
    port, metrics_port = free_port(), free_port()
    # a worker started alone would serve its metrics there; the launcher's do not (the API's /metrics shows them)
    env = {**os.environ, "UNLEARND_DATA_DIR": str(data_dir), "UNLEARND_PORT": str(port),
           "UNLEARND_WORKER_METRICS_PORT": str(metrics_port)}
    env.pop("UNLEARND_REDIS_URL", None)
    env.pop("UNLEARND_API_KEYS", None)
    launcher = subprocess.Popen([sys.executable, "-m", "unlearnd", "run"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, ready = time.monotonic() + 90, False
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.3)
        assert ready, "unlearnd run did not become ready"
        family = psutil.Process(launcher.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "redis-server" in names and "workers.janitor" in names and "uvicorn" in names
        keys = (data_dir / "api_keys.json").read_text()
        assert "governance" in keys
        try:
            answered = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).status_code
        except httpx.ConnectError:
            answered = None
        assert answered is None, "a worker of unlearnd run serves metrics of its own"

        # kill -9 the worker and the embedded Redis: the launcher brings both back, the API keeps answering
        def supervised():  # the live worker and Redis processes the launcher started (not the worker's own children)
            found = []
            for p in psutil.Process(launcher.pid).children():
                try:
                    argv = p.cmdline()
                except psutil.Error:  # killed and not reaped yet
                    continue
                if argv and (argv[-2:] == ["-m", "workers"] or "redis-server" in argv[0]):
                    found.append(p)
            return found

        victims = supervised()
        assert len(victims) == 2, [p.cmdline() for p in family]
        worker = next(p for p in victims if p.cmdline()[-2:] == ["-m", "workers"])
        scheduler, until = worker.children(), time.monotonic() + 10  # RQ's scheduler, forked by the worker
        while not scheduler and time.monotonic() < until:  # (it starts just after the worker registers)
            time.sleep(0.2)
            scheduler = worker.children()
        assert scheduler, "the worker runs no scheduler"
        for victim in victims:
            victim.kill()
        deadline, back = time.monotonic() + 60, False
        while time.monotonic() < deadline and not back:
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            fresh = {p.pid for p in supervised()} - {p.pid for p in victims}
            back = (len(fresh) == 2
                    and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200)
            time.sleep(0.3)
        assert back, "the worker and Redis were not restarted"
        gone, alive = psutil.wait_procs(scheduler, timeout=10)
        assert alive == [], "the killed worker's scheduler outlived it"
        family = psutil.Process(launcher.pid).children(recursive=True)
    finally:
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output
    assert f"http://127.0.0.1:{port}/docs" in output and "curl" in output
    time.sleep(0.5)
    assert [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    shutil.rmtree(data_dir, ignore_errors=True)


def _launch(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "UNLEARND_DATA_DIR": str(data_dir), "UNLEARND_PORT": str(port),
           "UNLEARND_DEMO_MODEL": "false"}
    env.pop("UNLEARND_REDIS_URL", None)
    env.pop("UNLEARND_API_KEYS", None)
    return subprocess.Popen([sys.executable, "-m", "unlearnd", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_ready(port: int, launcher: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert launcher.poll() is None, launcher.communicate()[0]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("unlearnd run did not become ready")


def _alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(p.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return left


def test_kill_9_of_the_launcher_takes_every_child_with_it_and_a_second_launcher_is_refused():
    data_dir = Path(tempfile.mkdtemp(prefix="unlearnd-k9-"))
    port = free_port()
    launcher = _launch(data_dir, port)
    family: list[psutil.Process] = []
    try:
        _wait_ready(port, launcher)
        family = psutil.Process(launcher.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "redis-server" in names and "workers.janitor" in names and "uvicorn" in names
        launcher.kill()
        launcher.wait(10)
        deadline = time.monotonic() + 5
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(family) == [], "orphans survived the launcher"
        # nothing holds the data directory or the port any more: a new launcher starts cleanly
        again = _launch(data_dir, port)
        try:
            _wait_ready(port, again)
            # while it runs, another launcher on the same data directory is refused and leaves it unharmed
            second = _launch(data_dir, free_port())
            output, _ = second.communicate(timeout=60)
            assert second.returncode == 1, output
            assert "in use by another `unlearnd run`" in output and str(again.pid) in output
            assert "Traceback" not in output
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        finally:
            again.send_signal(signal.SIGINT)
            again.communicate(timeout=60)
        assert again.returncode == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for p in family:  # only if the test failed: leave no orphan behind
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
