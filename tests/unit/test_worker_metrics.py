"""A worker on a host of its own serves its and its work-horses' metrics (UNLEARND_WORKER_METRICS_PORT); the
workers `unlearnd run` starts do not (the API's /metrics shows them)."""

import subprocess
import sys

import pytest

from service.metrics import MULTIPROC_ENV, serve_worker_metrics
from tests.integration.conftest import free_port
from unlearnd.cli.processes import child_env
from unlearnd.settings import Settings

# A work-horse's series, written the way a forked work-horse writes them (multiprocess mode), read by the
# parent's endpoint; in a fresh interpreter, because multiprocess mode is chosen at import.
PROBE = """
import os, sys, httpx
from service.metrics import JOB_DURATION, serve_worker_metrics
port = int(sys.argv[1])
listening = serve_worker_metrics(port, "127.0.0.1")
pid = os.fork()
if pid == 0:
    listening.close()  # what a work-horse does
    JOB_DURATION.labels("forget_vector", "succeeded").observe(3.0)
    os._exit(0)
os.waitpid(pid, 0)
print(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
"""


def test_the_endpoint_shows_what_a_forked_work_horse_observed_and_nothing_of_an_earlier_run(tmp_path):
    env = {**child_env(Settings(data_dir=tmp_path)), MULTIPROC_ENV: str(tmp_path / "metrics")}
    earlier = subprocess.run([sys.executable, "-c", PROBE, str(free_port())], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
    assert 'outcome="succeeded"} 1.0' in earlier.stdout and list((tmp_path / "metrics").glob("*.db"))
    done = subprocess.run([sys.executable, "-c", PROBE, str(free_port())], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert 'unlearnd_job_duration_seconds_count{method="forget_vector",outcome="succeeded"} 1.0' in done.stdout
    assert 'unlearnd_job_duration_seconds_sum{method="forget_vector",outcome="succeeded"} 3.0' in done.stdout


def test_without_a_metrics_directory_it_refuses_to_serve(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        serve_worker_metrics(free_port(), "127.0.0.1")


def test_children_get_exactly_the_settings_so_a_cleared_port_is_not_inherited(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARND_WORKER_METRICS_PORT", "9100")
    settings = Settings(data_dir=tmp_path)
    assert settings.worker_metrics_port == 9100
    assert child_env(settings)["UNLEARND_WORKER_METRICS_PORT"] == "9100"
    local_workers = settings.model_copy(update={"worker_metrics_port": None})  # what the launcher does
    assert "UNLEARND_WORKER_METRICS_PORT" not in child_env(local_workers)
