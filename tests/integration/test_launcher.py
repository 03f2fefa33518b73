"""`unlearnd run` (what `make run` starts): serves, prints its keys, restarts a worker or Redis that dies, and
Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from tests.integration.conftest import free_port


def test_run_serves_and_ctrl_c_stops_everything(stack):
    data_dir = Path(tempfile.mkdtemp(prefix="unlearnd-run-"))
    shutil.copytree(stack.settings.store_dir, data_dir / "store")  # reuse the trained demo model
    port = free_port()
    env = {**os.environ, "UNLEARND_DATA_DIR": str(data_dir), "UNLEARND_PORT": str(port)}
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

        # kill -9 the worker and the embedded Redis: the launcher brings both back, the API keeps answering
        def supervised():  # the live worker and Redis processes under the launcher now
            found = []
            for p in psutil.Process(launcher.pid).children(recursive=True):
                try:
                    argv = p.cmdline()
                except psutil.Error:  # killed and not reaped yet
                    continue
                if argv and (argv[-2:] == ["-m", "workers"] or "redis-server" in argv[0]):
                    found.append(p)
            return found

        victims = supervised()
        assert len(victims) == 2, [p.cmdline() for p in family]
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
        family = psutil.Process(launcher.pid).children(recursive=True)
    finally:
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output
    assert f"http://127.0.0.1:{port}/docs" in output and "curl" in output
    time.sleep(0.5)
    assert [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    shutil.rmtree(data_dir, ignore_errors=True)
