"""The `unlearnd` command against the real service, run as a user runs it (a subprocess; UNLEARND_URL and
UNLEARND_API_KEY in its environment): submit → wait → receipt → verify-receipt → predict, and how it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tests.integration.conftest import KEYS
from unlearnd.cli.commands import main

FORGOTTEN, KEPT = 3, 1


def unlearnd(stack, role: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNLEARND_URL": stack.base_url, "UNLEARND_DATA_DIR": str(stack.settings.data_dir)}
    env.pop("UNLEARND_API_KEY", None)
    if role is not None:
        env["UNLEARND_API_KEY"] = KEYS[role]
    return subprocess.run([sys.executable, "-m", "unlearnd", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def digit_pngs(directory: Path, label: int, count: int = 5) -> list[str]:
    """`count` training images of digit `label` as 8×8 grayscale PNG files."""
    digits = load_digits()
    paths = []
    for i, image in enumerate(digits.images[digits.target == label][:count]):
        path = directory / f"digit{label}-{i}.png"
        Image.fromarray(np.round(image / 16 * 255).astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    return paths


def labels(stack, model: str, images: list[str]) -> list[int]:
    result = unlearnd(stack, "inference", "predict", model, *images, "--json")
    assert result.returncode == 0, result.stderr
    return [p["label"] for p in json.loads(result.stdout)["predictions"]]


def test_submit_wait_receipt_verify_predict(embedded_stack, tmp_path):
    stack = embedded_stack
    model = stack.clone_demo_model("digits-cli")
    forgotten, kept = digit_pngs(tmp_path, FORGOTTEN), digit_pngs(tmp_path, KEPT)
    assert labels(stack, model, forgotten).count(FORGOTTEN) >= 4  # the model knows the digit before

    submitted = unlearnd(stack, "governance", "submit", model, str(FORGOTTEN), "--reason", "DSR-CLI", "-q")
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.strip()
    assert request_id.startswith("fr_")

    waited = unlearnd(stack, "governance", "wait", request_id, "--timeout", "240")
    assert waited.returncode == 0, waited.stderr
    final = json.loads(waited.stdout)
    assert final["status"] == "succeeded" and final["progress"]["fraction"] == 1.0
    assert final["result"]["metrics"]["after"]["UA"] >= 95

    status = json.loads(unlearnd(stack, "governance", "status", request_id).stdout)
    assert status["id"] == request_id and status["reason"] == "DSR-CLI"
    listed = unlearnd(stack, "governance", "list", "--model", model, "--status", "succeeded", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["data"]] == [request_id]

    receipt, keys = tmp_path / "receipt.json", tmp_path / "keys.json"
    assert unlearnd(stack, "governance", "receipt", request_id, "-o", str(receipt)).returncode == 0
    assert unlearnd(stack, "inference", "keys", "-o", str(keys)).returncode == 0
    verified = unlearnd(stack, None, "verify-receipt", str(receipt), "--public-key", str(keys))
    assert verified.returncode == 0 and request_id in verified.stdout, verified.stderr
    assert unlearnd(stack, None, "verify-receipt", str(receipt)).returncode == 0  # the data directory's keys
    document = json.loads(receipt.read_text())
    document["receipt"]["classes"] = [KEPT]
    receipt.write_text(json.dumps(document))
    assert unlearnd(stack, None, "verify-receipt", str(receipt), "--public-key", str(keys)).returncode == 1

    report = unlearnd(stack, "governance", "report", request_id, "-o", str(tmp_path / "report.png"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    assert labels(stack, model, forgotten).count(FORGOTTEN) <= 1  # served with the forget vector now
    assert labels(stack, model, kept).count(KEPT) >= 4

    finished = unlearnd(stack, "governance", "cancel", request_id)
    assert finished.returncode == 1 and "409" in finished.stderr and "cannot be cancelled" in finished.stderr


def test_errors_are_the_problem_and_exit_1(embedded_stack):
    stack = embedded_stack
    no_key = unlearnd(stack, None, "models")
    assert no_key.returncode == 1 and "401" in no_key.stderr and "Authorization: Bearer" in no_key.stderr
    wrong_role = unlearnd(stack, "inference", "submit", "digits-cnn", "1")
    assert wrong_role.returncode == 1 and "403" in wrong_role.stderr
    out_of_range = unlearnd(stack, "governance", "submit", "digits-cnn", "99")
    assert out_of_range.returncode == 1 and "outside 0..9" in out_of_range.stderr
    usage = unlearnd(stack, "governance", "submit", "digits-cnn")  # neither classes nor --samples-file
    assert usage.returncode == 2 and "--samples-file" in usage.stderr
    unreachable = subprocess.run([sys.executable, "-m", "unlearnd", "--url", "http://127.0.0.1:9", "models"],
                                 capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 1 and "Cannot connect" in unreachable.stderr


def test_models_table_and_samples_file(embedded_stack, tmp_path):
    stack = embedded_stack
    models = unlearnd(stack, "inference", "models")
    assert models.returncode == 0 and models.stdout.splitlines()[0].split()[:2] == ["NAME", "VERSION"]
    assert any(line.split()[0] == "digits-cnn" for line in models.stdout.splitlines()[1:])
    ids = tmp_path / "ids.txt"
    ids.write_text("no-such-sample\n\n  another-unknown  \n")
    refused = unlearnd(stack, "governance", "submit", "digits-cnn", "--samples-file", str(ids))
    assert refused.returncode == 1 and "Unknown sample ids" in refused.stderr
    assert "no-such-sample" in refused.stderr and "another-unknown" in refused.stderr


@pytest.mark.parametrize("command", [
    "run", "bootstrap", "verify-receipt", "rotate-signing-key", "adopt-store", "submit", "wait", "status", "list",
    "cancel", "receipt", "report", "predict", "models", "register-model", "register-dataset", "rollback", "keys"])
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"unlearnd {command}" in capsys.readouterr().out
