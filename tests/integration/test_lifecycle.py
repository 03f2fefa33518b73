"""Governance lifecycle over real HTTP: receipts, audit, idempotency, cancellation, callbacks, listing,
rollback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

from sqlalchemy import insert

from models_store import schema
from models_store.store import now_iso
from tests.integration.conftest import KEYS
from unlearnd.security.secret_files import key_id


def settled_callback(record: dict) -> bool:
    """The request's callback was delivered or given up (it is pending from the moment the request ends)."""
    return record["callback"] is not None and not record["callback"]["pending"]


def _submit(stack, model: str, body: dict, headers: dict | None = None):
    with stack.client("governance") as c:
        return c.post(f"/v1/models/{model}/forget-requests", json=body, headers=headers or {})


def test_receipt_verifies_offline_and_tampering_fails(stack, tmp_path):
    model = stack.clone_demo_model("digits-receipts")
    request_id = _submit(stack, model, {"classes": [5]}).json()["id"]
    assert stack.wait_terminal(request_id)["status"] == "succeeded"
    with stack.client("governance") as c:
        receipt = c.get(f"/v1/forget-requests/{request_id}/receipt").json()
        state = c.get(f"/v1/models/{model}/state").json()
    body = receipt["receipt"]
    assert body["request_id"] == request_id and body["model"] == model
    assert body["weights_sha256_before"] == body["weights_sha256_after"] == state["weights_sha256"]
    assert [a["id"] for a in body["artifacts"]] == state["artifacts"]
    assert body["metrics"]["after"]["UA"] >= 95

    path, keys = tmp_path / "receipt.json", tmp_path / "keys.json"
    path.write_text(json.dumps(receipt))
    with stack.client("inference") as c:  # any role may read the public keys
        keys.write_text(c.get("/v1/keys").text)
    assert receipt["signature"]["algorithm"] == "Ed25519"
    assert receipt["signature"]["key_id"] in [k["kid"] for k in json.loads(keys.read_text())["keys"]]
    verify = [sys.executable, "-m", "unlearnd", "verify-receipt", str(path), "--public-key", str(keys)]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    receipt["receipt"]["metrics"]["after"]["UA"] = 50.0
    path.write_text(json.dumps(receipt))
    assert subprocess.run(verify, capture_output=True).returncode == 1

    with stack.client("admin") as c:
        actions = [e["action"] for e in c.get("/v1/audit", params={"request_id": request_id}).json()["data"]]
    assert actions[:3] == ["request.accepted", "request.running", "request.succeeded"]


def test_idempotency_replay_mismatch_and_conflict(stack):
    model = stack.clone_demo_model("digits-idem")
    headers = {"Idempotency-Key": "delete-42"}
    first = _submit(stack, model, {"classes": [1], "reason": "r"}, headers)
    replay = _submit(stack, model, {"classes": [1], "reason": "r"}, headers)
    assert first.status_code == replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == first.headers["location"]
    mismatch = _submit(stack, model, {"classes": [2]}, headers)
    assert mismatch.status_code == 422 and "another body" in mismatch.json()["detail"]
    # Concurrent retries with one key: one request is recorded, every answer is its 202.
    burst_headers = {"Idempotency-Key": "burst"}
    with ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(lambda _: _submit(stack, model, {"classes": [3]}, burst_headers), range(16)))
    assert {r.status_code for r in burst} == {202} and len({r.json()["id"] for r in burst}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in burst) == 1
    # A claim bound to no request, as versions before group commit wrote it while accepting: 409 while fresh.
    body = json.dumps({"classes": [1]}).encode()
    with stack.ledger.db.transaction() as conn:
        conn.execute(insert(schema.idempotency).values(
            key="in-flight", key_id=key_id(KEYS["governance"]), created_at=now_iso(),
            body_sha256=hashlib.sha256(model.encode() + b"\0" + body).hexdigest()))  # as they wrote it: raw body
    with stack.client("governance") as c:
        conflict = c.post(f"/v1/models/{model}/forget-requests", content=body,
                          headers={"Idempotency-Key": "in-flight", "Content-Type": "application/json"})
    assert conflict.status_code == 409
    assert len(stack.ledger.list(model=model)) == 2
    stack.wait_terminal(first.json()["id"])
    stack.wait_terminal(burst[0].json()["id"])


@contextlib.contextmanager
def _hook_server():
    """A local HTTP endpoint that records every callback POSTed to it: yields (url, [(body, headers)])."""
    received: list[tuple[bytes, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append((self.rfile.read(int(self.headers["Content-Length"])), dict(self.headers)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()


def test_cancel_a_queued_request(stack):
    model, busy = stack.clone_demo_model("digits-cancel-q"), stack.clone_demo_model("digits-cancel-busy")
    ahead = _submit(stack, busy, {"classes": [5]}).json()["id"]  # holds the one worker: what follows stays queued
    stack.wait_for(ahead, lambda r: r["status"] == "running")
    with _hook_server() as (url, received):
        request_id = _submit(stack, model, {"classes": [2], "callback_url": url}).json()["id"]
        with stack.client("governance") as c:
            response = c.delete(f"/v1/forget-requests/{request_id}")
            assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text
            assert c.delete(f"/v1/forget-requests/{request_id}").status_code == 409
        record = stack.wait_for(request_id, settled_callback, timeout_s=60)
    assert record["callback"]["delivered"]
    assert [json.loads(body)["status"] for body, _ in received] == ["cancelled"]
    assert stack.wait_terminal(ahead)["status"] == "succeeded"
    time.sleep(2)  # give the worker, free again, a chance to (wrongly) run it
    assert stack.ledger.get(request_id)["status"] == "cancelled"
    assert stack.state(model)["requests"] == []


def test_cancel_a_running_request_publishes_nothing(stack):
    model = stack.clone_demo_model("digits-cancel-r")
    request_id = _submit(stack, model, {"classes": [4]}).json()["id"]
    stack.wait_for(request_id, lambda r: r["status"] == "running" and r["progress"]["fraction"] > 0.05)
    with stack.client("governance") as c:
        response = c.delete(f"/v1/forget-requests/{request_id}")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    assert stack.wait_terminal(request_id)["status"] == "cancelled"
    assert stack.state(model)["artifacts"] == []


def test_callback_is_signed_and_recorded(stack):
    with _hook_server() as (url, received):
        model = stack.clone_demo_model("digits-callback")
        request_id = _submit(stack, model, {"classes": [6], "callback_url": url}).json()["id"]
        stack.wait_terminal(request_id)
        record = stack.wait_for(request_id, settled_callback, timeout_s=30)
    assert record["callback"]["delivered"] and record["callback"]["status"] == 204
    payload, headers = received[0]
    # Standard Webhooks, under a key of its own (not the receipt key)
    secret = (stack.settings.data_dir / "webhook_secret").read_text().strip()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + payload
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert headers["webhook-id"] == record["callback"]["message_id"]
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert "X-Unlearnd-Signature" not in headers
    assert json.loads(payload)["id"] == request_id and json.loads(payload)["status"] == "succeeded"


def test_a_stalled_callback_endpoint_never_holds_up_forget_jobs(embedded_stack):
    """A receiver that accepts the connection and then drips its answer forever: each attempt ends at the
    deadline, the outcome is recorded, and a forget request queued behind it still runs."""
    import socket

    stack = embedded_stack

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def drip():
        conns = []
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                conns.append(conn)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.sendall(b"X-Drip: 1\r\n")
        for conn in conns:
            conn.close()

    threading.Thread(target=drip, daemon=True).start()
    try:
        model = stack.clone_demo_model("digits-stalled-hook")
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        first = _submit(stack, model, {"classes": [1], "callback_url": url}).json()["id"]
        stack.wait_terminal(first)
        second = _submit(stack, model, {"classes": [2]}).json()["id"]
        started = time.monotonic()
        assert stack.wait_terminal(second)["status"] in ("succeeded", "failed")
        # at most one attempt (2 s here) can be in the worker's hands when the forget job arrives
        assert time.monotonic() - started < 60
        record = stack.wait_for(first, settled_callback, timeout_s=60)
    finally:
        stop.set()
        listener.close()
    outcome = record["callback"]
    assert outcome["delivered"] is False and outcome["attempts"] == stack.settings.callback_attempts
    assert "within 2 s" in outcome["error"]


def test_failed_callbacks_are_retried_on_schedule_and_410_ends_them(embedded_stack):
    """The workers run RQ's scheduler: a failed attempt schedules the next one (UNLEARND_CALLBACK_RETRY_DELAYS_S,
    0.2 s here) and returns, so a receiver that answers 503 twice is delivered on the third attempt; one that
    answers 410 Gone gets exactly one attempt."""
    stack = embedded_stack
    statuses = {"/flaky": [503, 503, 204], "/gone": [410, 204]}
    received: list[tuple[str, float, str]] = []  # (path, when, webhook-id)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, time.monotonic(), self.headers["webhook-id"]))
            self.send_response(statuses[self.path].pop(0))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        model = stack.clone_demo_model("digits-retried-hook")
        flaky = _submit(stack, model, {"classes": [3], "callback_url": f"{base}/flaky"}).json()["id"]
        gone = _submit(stack, model, {"classes": [7], "callback_url": f"{base}/gone"}).json()["id"]
        delivered = stack.wait_for(flaky, settled_callback, timeout_s=150)["callback"]
        refused = stack.wait_for(gone, settled_callback, timeout_s=60)["callback"]
        time.sleep(2.5)  # the scheduler polls about once a second: time for an attempt that must not come
    finally:
        server.shutdown()
        server.server_close()
    assert delivered["delivered"] and delivered["status"] == 204 and delivered["attempts"] == 3
    flaky_posts = [(when, message_id) for path, when, message_id in received if path == "/flaky"]
    assert len(flaky_posts) == 3 and {m for _, m in flaky_posts} == {delivered["message_id"]}
    assert all(later - earlier >= 0.2 for (earlier, _), (later, _) in itertools.pairwise(flaky_posts))
    assert refused["delivered"] is False and refused["status"] == 410 and refused["attempts"] == 1
    assert [path for path, _, _ in received].count("/gone") == 1


def test_list_pages_and_rollback(stack):
    model = stack.clone_demo_model("digits-rollback")
    first = _submit(stack, model, {"classes": [0]}).json()["id"]
    stack.wait_terminal(first)
    second = _submit(stack, model, {"classes": [9]}).json()["id"]
    stack.wait_terminal(second)
    with stack.client("governance") as c:
        page = c.get("/v1/forget-requests", params={"model": model, "limit": 1}).json()
        assert [r["id"] for r in page["data"]] == [first] and page["next_cursor"]
        rest = c.get("/v1/forget-requests", params={"model": model, "cursor": page["next_cursor"]}).json()
        assert [r["id"] for r in rest["data"]] == [second] and rest["next_cursor"] is None
        state = c.get(f"/v1/models/{model}/state").json()
    assert state["forgotten_classes"] == [0, 9]
    with stack.client("governance") as c:
        assert c.post(f"/v1/models/{model}/rollback", json={"state_version": 2}).status_code == 403
    with stack.client("admin") as c:
        silent = c.post(f"/v1/models/{model}/rollback", json={"state_version": 2, "reason": "test"})
        assert silent.status_code == 409 and silent.json()["requests"] == [second]  # would un-forget class 9
        assert c.get(f"/v1/models/{model}/state").json()["state_version"] == state["state_version"]
        rolled = c.post(f"/v1/models/{model}/rollback",
                        json={"state_version": 2, "reason": "test", "reinstate": [second]})
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["forgotten_classes"] == [0] and rolled.json()["requests"] == [first]
        served = c.post(f"/v1/models/{model}/predict", json={"inputs": [[[[0.0] * 8] * 8]]}).json()
        assert served["state_version"] == state["state_version"] + 1
        assert served["applied"] == rolled.json()["artifacts"]
        audit = c.get("/v1/audit", params={"action": "model.rollback", "model": model}).json()["data"]
        assert audit[0]["detail"]["to_state"] == 2 and audit[0]["actor"] == key_id(KEYS["admin"])
        assert audit[0]["detail"]["reverted"] == [second]
    with stack.client("governance") as c:
        reverted = c.get(f"/v1/forget-requests/{second}").json()
        assert reverted["status"] == "reverted" and reverted["result"]["reverted"]["to_state"] == 2
        assert c.get(f"/v1/forget-requests/{first}").json()["status"] == "succeeded"
