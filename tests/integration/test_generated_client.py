"""A client generated from the live /openapi.json by a standard generator (openapi-python-client) submits a
forget request and reads it back, its progress, result and receipt parsed into the generated models."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integration.conftest import KEYS


def _generate(stack, directory: Path, package: str):
    spec = directory / "openapi.json"
    spec.write_text(httpx.get(f"{stack.base_url}/openapi.json", timeout=30).raise_for_status().text)
    config = directory / "generator.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run on the generated code
    generator = Path(sys.executable).parent / "openapi-python-client"
    result = subprocess.run([str(generator), "generate", "--path", str(spec), "--output-path",
                             str(directory / package), "--meta", "none", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ForgetRequestCreate" not in result.stdout, result.stdout  # no warning about the request body


def test_a_generated_client_submits_a_forget_request_and_reads_it_back(embedded_stack, tmp_path, monkeypatch):
    stack = embedded_stack
    package = "unlearnd_generated"
    _generate(stack, tmp_path, package)
    monkeypatch.syspath_prepend(str(tmp_path))
    api = importlib.import_module(package)
    create = importlib.import_module(f"{package}.api.forget_requests.create_forget_request")
    read = importlib.import_module(f"{package}.api.forget_requests.get_forget_request")
    get_receipt = importlib.import_module(f"{package}.api.forget_requests.get_receipt")
    models = importlib.import_module(f"{package}.models")

    model = stack.clone_demo_model("digits-generated")
    client = api.AuthenticatedClient(base_url=stack.base_url, token=KEYS["governance"], raise_on_unexpected_status=True)
    accepted = create.sync_detailed(model=model, client=client,
                                    body=models.ForgetRequestCreate(classes=[4], reason="generated client"))
    assert accepted.status_code == 202 and int(accepted.headers["Retry-After"]) >= 1
    record = accepted.parsed
    assert isinstance(record, models.ForgetRequestPublic)
    assert record.status == models.RequestStatus.QUEUED and record.classes == [4]
    assert accepted.headers["Location"] == f"/v1/forget-requests/{record.id}"

    stack.wait_terminal(record.id)
    done = read.sync(request_id=record.id, client=client)
    assert isinstance(done, models.ForgetRequestPublic), done
    assert done.status == models.RequestStatus.SUCCEEDED and done.reason == "generated client"
    assert done.progress.stage == models.ProgressStage.DONE and done.progress.fraction == 1.0
    assert isinstance(done.result, models.Result) and done.result.method == "forget_vector"
    assert done.result.metrics.after.ua >= 95 and done.result.guard.passed
    assert done.finished_at is not None and done.finished_at >= done.created_at  # date-time: parsed datetimes

    receipt = get_receipt.sync(request_id=record.id, client=client)
    assert isinstance(receipt, models.Receipt), receipt
    assert receipt.receipt.request_id == record.id and receipt.signature.algorithm.value == "Ed25519"

    missing = read.sync_detailed(request_id="fr_" + "0" * 32, client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.Problem)
    assert missing.parsed.title == "Not found"
