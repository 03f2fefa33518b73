"""Callbacks: where they may go (the address checker), how they are signed (Standard Webhooks), and how one
attempt is bounded. Traffic goes to loopback only; every other rule is checked on the checker itself, with
a stub resolver (no DNS)."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import http.server
import ipaddress
import json
import socket
import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from models_store import Ledger, open_ledger
from models_store.store import now_iso
from unlearnd import callbacks
from unlearnd.callbacks import (
    AllowList,
    CallbackRefused,
    address_refusal,
    attempt_delivery,
    callback_queue_name,
    check_callback_target,
    check_callback_url_at_intake,
    deliver,
    deliver_callback,
    host_header,
    literal_address,
    load_or_create_webhook_secret,
    next_delay_s,
    notify_terminal,
    parse_retry_after,
    webhook_headers,
    webhook_signature,
)
from unlearnd.settings import Settings

NOWHERE = AllowList()
LOOPBACK = AllowList.parse("127.0.0.0/8")


def no_dns(host, port):
    raise AssertionError(f"the checker must not resolve {host!r} here")


# ---- the address checker -----------------------------------------------------------------------------
@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255",
    "192.168.1.1", "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.100.100.200", "192.0.0.1",
    "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "2001:db8::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1",
    "2002:7f00:1::1", "2002:a00:1::", "100::1",
])
def test_non_global_addresses_are_refused(address):
    assert address_refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "2a00:1450:4001:80b::200e", "::ffff:93.184.216.34"])
def test_global_addresses_pass(address):
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("host", "address"), [
    ("0x7f000001", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("017700000001", "127.0.0.1"),
    ("0xa9fea9fe", "169.254.169.254"), ("10.1", "10.0.0.1"), ("::ffff:7f00:1", "::ffff:127.0.0.1"),
])
def test_numeric_host_forms_mean_their_address(host, address):
    assert literal_address(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://0x7f000001/hook", "http://2130706433:8080/", "http://0177.0.0.1/",
    "http://127.1/", "http://[::1]:9000/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://169.254.169.254/latest/meta-data/", "http://0xa9fea9fe/", "http://10.0.0.5/",
    "https://192.168.0.1/", "http://[fe80::1]/", "http://[fd00:ec2::254]/", "http://0.0.0.0:8000/",
    "http://100.100.100.200/", "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a9fe:a9fe::1]/",
])
def test_literal_hosts_are_refused_without_any_lookup(url):
    with pytest.raises(CallbackRefused, match="refused"):
        check_callback_target(url, NOWHERE, resolver=no_dns)


@pytest.mark.parametrize(("url", "needle"), [
    ("ftp://93.184.216.34/", "http or https"), ("file:///etc/passwd", "http or https"),
    ("http://user:pw@93.184.216.34/", "user info"), ("http:///nohost", "no host"),
    ("http://93.184.216.34:99999/", "not a valid URL"), ("gopher://x/", "http or https"),
])
def test_malformed_callback_urls_are_refused(url, needle):
    with pytest.raises(CallbackRefused, match=needle):
        check_callback_target(url, NOWHERE, resolver=no_dns)


def test_names_are_resolved_and_every_address_must_pass():
    def resolver(answers):
        return lambda host, port: answers[host]

    answers = {"public.test": ["93.184.216.34"], "inside.test": ["10.1.2.3"],
               "mixed.test": ["93.184.216.34", "127.0.0.1"], "mapped.test": ["::ffff:169.254.169.254"],
               "empty.test": []}
    address, host, port = check_callback_target("https://public.test/x", NOWHERE, resolver(answers))
    assert (str(address), host, port) == ("93.184.216.34", "public.test", 443)
    for name in ("inside", "mixed", "mapped", "empty"):
        with pytest.raises(CallbackRefused):
            check_callback_target(f"http://{name}.test/", NOWHERE, resolver(answers))

    def fails(host, port):
        raise socket.gaierror("Name or service not known")

    with pytest.raises(CallbackRefused, match="does not resolve"):
        check_callback_target("http://nxdomain.test/", NOWHERE, fails)


def test_the_allow_list_admits_networks_and_host_names_only():
    allow = AllowList.parse(" 127.0.0.0/8, ::1, 10.20.0.0/16 ,hooks.internal ")
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert address_refusal(ipaddress.ip_address("::1"), allow) is None
    assert address_refusal(ipaddress.ip_address("10.20.3.4"), allow) is None
    assert address_refusal(ipaddress.ip_address("10.21.3.4"), allow) is not None
    assert address_refusal(ipaddress.ip_address("169.254.169.254"), allow) is not None
    assert address_refusal(ipaddress.ip_address("::ffff:10.21.0.1"), allow) is not None
    address, _, _ = check_callback_target("http://hooks.internal:81/", allow, lambda h, p: ["10.9.9.9"])
    assert str(address) == "10.9.9.9"
    with pytest.raises(CallbackRefused):
        check_callback_target("http://other.internal/", allow, lambda h, p: ["10.9.9.9"])
    assert AllowList.parse(None) == AllowList() and AllowList.parse("") == AllowList()
    with pytest.raises(ValueError, match="neither"):
        AllowList.parse("not a cidr/99")


def test_intake_refuses_what_delivery_would_refuse(tmp_path):
    settings = Settings(data_dir=tmp_path)
    for url in ("http://localhost:8000/x", "http://api.localhost/", "http://0x7f000001/", "http://[::1]/"):
        with pytest.raises(CallbackRefused):
            check_callback_url_at_intake(url, settings, resolver=no_dns)
    with pytest.raises(CallbackRefused, match="10.0.0.7"):
        check_callback_url_at_intake("https://intranet.test/", settings, lambda h, p: ["10.0.0.7"])
    check_callback_url_at_intake("https://hooks.test/", settings, lambda h, p: ["93.184.216.34"])

    def fails(host, port):
        raise socket.gaierror("temporary failure in name resolution")

    check_callback_url_at_intake("https://down.test/", settings, fails)  # checked again at delivery
    allowed = Settings(data_dir=tmp_path, callback_allow="127.0.0.0/8,localhost")
    check_callback_url_at_intake("http://127.0.0.1:9/", allowed, resolver=no_dns)
    check_callback_url_at_intake("http://localhost:9/", allowed, resolver=no_dns)


# ---- signing -----------------------------------------------------------------------------------------
def test_standard_webhooks_signature_matches_the_reference_vector():
    # The example of the Standard Webhooks specification and its reference libraries.
    assert webhook_signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                             1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_webhook_secret_is_its_own_key(tmp_path):
    settings = Settings(data_dir=tmp_path)
    secret = load_or_create_webhook_secret(settings)
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert load_or_create_webhook_secret(settings) == secret
    assert (tmp_path / "webhook_secret").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "receipt_key").exists()
    assert load_or_create_webhook_secret(Settings(data_dir=tmp_path, webhook_secret="whsec_" + "A" * 44)) \
        == "whsec_" + "A" * 44
    headers = webhook_headers(secret, "msg_1", b"{}", timestamp=1700000000)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == "1700000000"
    with pytest.raises(ValueError, match="base64"):
        webhook_signature("whsec_not base64!", "m", 1, b"")


# ---- one attempt, against loopback only -----------------------------------------------------------------
class Receiver:
    """A loopback HTTP server (127.0.0.1, or `host`) whose handler a test chooses; records each request."""

    def __init__(self, handler, host="127.0.0.1"):
        self.requests = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers), body))
                handler(self)

            def log_message(self, *args):
                pass

        server_class = type("Server", (http.server.ThreadingHTTPServer,),
                            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        self.server = server_class((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(handler, host="127.0.0.1"):
        made.append(Receiver(handler, host))
        return made[-1]

    yield make
    for r in made:
        r.close()


def answer(status, headers=None):
    def handle(h):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return handle


def loopback_settings(tmp_path, **extra):
    return Settings(data_dir=tmp_path, callback_allow="127.0.0.0/8", callback_timeout_s=1.0, **extra)


def test_an_attempt_connects_to_the_checked_address_and_sends_the_host_name(tmp_path, receiver_factory):
    receiver = receiver_factory(answer(204))
    lookups = []

    def resolver(host, port):
        lookups.append(host)
        return ["127.0.0.1"]

    outcome = attempt_delivery(f"http://receiver.test:{receiver.port}/hook?x=1", b"{}", {"X-A": "b"},
                               loopback_settings(tmp_path), resolver)
    assert outcome.delivered and outcome.status == 204
    assert lookups == ["receiver.test"]  # one lookup, and the connection went to what it returned
    path, headers, _ = receiver.requests[0]
    assert path == "/hook?x=1" and headers["Host"] == f"receiver.test:{receiver.port}"


def test_an_attempt_refuses_a_refused_address_before_connecting(tmp_path, receiver_factory):
    receiver = receiver_factory(answer(204))
    outcome = attempt_delivery(f"http://127.0.0.1:{receiver.port}/", b"{}", {}, Settings(data_dir=tmp_path))
    assert not outcome.delivered and "loopback" in outcome.error
    outcome = attempt_delivery(f"http://rebind.test:{receiver.port}/", b"{}", {},
                               loopback_settings(tmp_path), lambda h, p: ["127.0.0.1", "10.0.0.1"])
    assert not outcome.delivered and "10.0.0.1" in outcome.error
    assert receiver.requests == []


def test_without_a_resolver_given_the_module_resolve_is_looked_up_when_called(tmp_path, receiver_factory,
                                                                            monkeypatch):
    """What lets a test (or a deployment) replace the resolver everywhere: no delivery binds it in advance."""
    receiver = receiver_factory(answer(204))
    lookups = []

    def stub(host, port):
        lookups.append((host, port))
        return ["127.0.0.1"]

    monkeypatch.setattr(callbacks, "resolve", stub)
    assert check_callback_target("http://hook.test:81/", LOOPBACK)[0] == ipaddress.ip_address("127.0.0.1")
    outcome = attempt_delivery(f"http://hook.test:{receiver.port}/", b"{}", {}, loopback_settings(tmp_path))
    assert outcome.delivered and lookups == [("hook.test", 81), ("hook.test", receiver.port)]


def test_redirects_are_never_followed(tmp_path, receiver_factory):
    target = receiver_factory(answer(204))
    redirecting = receiver_factory(answer(302, {"Location": f"http://127.0.0.1:{target.port}/stolen"}))
    outcome = attempt_delivery(f"http://127.0.0.1:{redirecting.port}/", b'{"secret": 1}', {},
                               loopback_settings(tmp_path))
    assert not outcome.delivered and outcome.status == 302 and "redirect" in outcome.error
    assert target.requests == []


def test_a_slow_drip_answer_is_cut_at_the_total_deadline(tmp_path, receiver_factory):
    def drip(h):
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        h.wfile.flush()
        for _ in range(40):  # a header line every 0.1 s: no single read ever times out
            try:
                h.wfile.write(b"X-Drip: 1\r\n")
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)

    receiver = receiver_factory(drip)
    started = time.monotonic()
    outcome = attempt_delivery(f"http://127.0.0.1:{receiver.port}/", b"{}", {}, loopback_settings(tmp_path))
    elapsed = time.monotonic() - started
    assert not outcome.delivered and "within 1 s" in outcome.error
    assert elapsed < 2.0, elapsed


def _ended_request(ledger: Ledger, url: str) -> str:
    request_id = f"fr_{uuid.uuid4().hex[:12]}"
    ledger.create({"id": request_id, "model": "m", "method": "auto", "classes": [1], "callback_url": url})
    ledger.mark_running(request_id)
    ledger.mark_failed(request_id, "for the test")
    return request_id


def test_deliver_signs_and_records_the_final_outcome(tmp_path, receiver_factory):
    receiver = receiver_factory(answer(500))
    settings = loopback_settings(tmp_path, callback_attempts=2)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, f"http://127.0.0.1:{receiver.port}/")
    payload = json.dumps({"id": request_id, "status": "failed"})
    def attempts(outcome: str) -> float:
        return REGISTRY.get_sample_value("unlearnd_callback_attempts_total", {"outcome": outcome}) or 0.0

    counted = {o: attempts(o) for o in ("retried", "failed")}
    assert ledger.claim_callback(request_id, "msg_abc", now_iso())
    first, delay = deliver(ledger, request_id, "msg_abc", payload, settings, attempt=1)
    assert not first.delivered and delay == 5  # another attempt follows
    waiting = ledger.get(request_id)["callback"]
    assert waiting["pending"] and waiting["attempts"] == 1 and waiting["status"] == 500
    assert waiting["next_attempt_at"] > waiting["at"]
    last, delay = deliver(ledger, request_id, "msg_abc", payload, settings, attempt=2)
    assert not last.delivered and delay is None
    assert {o: attempts(o) - n for o, n in counted.items()} == {"retried": 1, "failed": 1}
    recorded = ledger.get(request_id)["callback"]
    assert recorded["delivered"] is False and recorded["attempts"] == 2 and "500" in recorded["error"]
    assert not recorded["pending"] and not ledger.pending_callbacks()
    assert [e["action"] for e in ledger.audit_entries(request_id=request_id)][-1] == "callback.failed"

    _, headers, body = receiver.requests[-1]
    assert body == payload.encode() and headers["webhook-id"] == "msg_abc"
    secret = base64.b64decode(load_or_create_webhook_secret(settings)[6:])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30


def _fake_rq(settings, monkeypatch):
    """An in-memory Redis and its callbacks queue, with `get_settings` answering `settings` (as in a worker)."""
    fakeredis = pytest.importorskip("fakeredis")
    from rq import Queue
    from rq.serializers import JSONSerializer

    import unlearnd.settings

    monkeypatch.setattr(unlearnd.settings, "get_settings", lambda: settings)
    connection = fakeredis.FakeStrictRedis()
    return connection, Queue(callback_queue_name(settings), connection=connection, serializer=JSONSerializer)


def _run_callbacks(queue, until: float | None = None) -> None:
    """What a worker with RQ's scheduler does: enqueue the attempts due (at `until`, unix seconds), run them."""
    from rq import SimpleWorker
    from rq.scheduler import RQScheduler

    if until is not None:
        time.sleep(max(0.0, until + 0.05 - time.time()))
    scheduler = RQScheduler([queue], connection=queue.connection, serializer=queue.serializer)
    scheduler.prepare_registries([queue.name])
    scheduler.enqueue_scheduled_jobs()
    SimpleWorker([queue], connection=queue.connection, serializer=queue.serializer).work(burst=True)


def test_callbacks_go_to_their_own_queue_and_each_failure_schedules_the_next_attempt(tmp_path, receiver_factory,
                                                                                   monkeypatch):
    """End to end on an in-memory Redis: the forget queue stays empty, a failed attempt schedules the next one
    (RQ's scheduler enqueues it when due) instead of waiting, and the ledger records the attempt that got
    through."""
    from rq import Queue

    answers = [answer(503), answer(500), answer(204)]
    receiver = receiver_factory(lambda h: answers.pop(0)(h))
    settings = loopback_settings(tmp_path, callback_attempts=3, callback_retry_delays_s="0.3,0.6")
    connection, callbacks_queue = _fake_rq(settings, monkeypatch)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, f"http://127.0.0.1:{receiver.port}/")

    message_id = notify_terminal(ledger, request_id, settings, connection)
    assert callbacks_queue.job_ids == [f"cb-{message_id}-1"]
    assert Queue(settings.queue_name, connection=connection).count == 0
    started = time.time()
    _run_callbacks(callbacks_queue)
    assert time.time() - started < 0.3 and len(receiver.requests) == 1  # returned without waiting
    scheduled = callbacks_queue.scheduled_job_registry
    assert scheduled.get_job_ids() == [f"cb-{message_id}-2"] and callbacks_queue.count == 0
    due = scheduled.get_scheduled_time(f"cb-{message_id}-2").timestamp()
    assert started + 0.3 <= due <= time.time() + 1.3  # at least the delay (RQ keeps whole seconds)
    _run_callbacks(callbacks_queue)  # not due yet: nothing runs
    assert len(receiver.requests) == 1 and ledger.get(request_id)["callback"]["pending"]

    _run_callbacks(callbacks_queue, until=due)  # attempt 2 fails: attempt 3 in 0.6 s or more
    assert len(receiver.requests) == 2 and scheduled.get_job_ids() == [f"cb-{message_id}-3"]
    _run_callbacks(callbacks_queue, until=scheduled.get_scheduled_time(f"cb-{message_id}-3").timestamp())
    recorded = ledger.get(request_id)["callback"]
    assert recorded["delivered"] and recorded["status"] == 204 and recorded["attempts"] == 3
    ids = {headers["webhook-id"] for _, headers, _ in receiver.requests}
    assert len(receiver.requests) == 3 and ids == {message_id}  # one message, three attempts
    assert scheduled.count == 0 and callbacks_queue.count == 0


def test_the_schedule_its_last_delay_repeating_and_retry_after_within_it():
    default = Settings()
    assert default.callback_attempts == 8
    assert [next_delay_s(default, n, callbacks.Attempt(False, 500)) for n in range(1, 9)] == \
        [5, 300, 1800, 7200, 18000, 36000, 36000, None]  # Standard Webhooks' example schedule
    more = Settings(callback_attempts=12, callback_retry_delays_s="1,2")
    assert [next_delay_s(more, n, callbacks.Attempt(False, 500)) for n in (1, 2, 3, 11, 12)] == [1, 2, 2, 2, None]
    assert next_delay_s(more, 1, callbacks.Attempt(True, 204)) is None
    assert next_delay_s(more, 1, callbacks.Attempt(False, 410)) is None  # Gone: final at once
    assert next_delay_s(more, 1, callbacks.Attempt(False, 429, retry_after_s=1.5)) == 1.5  # at least that long
    assert next_delay_s(more, 1, callbacks.Attempt(False, 503, retry_after_s=3600)) == 2  # capped at the longest
    assert next_delay_s(more, 2, callbacks.Attempt(False, 503, retry_after_s=0)) == 2  # never shorter
    assert next_delay_s(default, 1, callbacks.Attempt(False, 503, retry_after_s=10**9)) == 36000


@pytest.mark.parametrize("text", ["", "0", "-1", "1,,2", "5,abc", "nan", "inf", "1e9"])
def test_retry_delays_must_be_positive_seconds(text):
    with pytest.raises(ValueError, match="callback retry delay"):
        Settings(callback_retry_delays_s=text)


def test_retry_delays_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("UNLEARND_CALLBACK_RETRY_DELAYS_S", " 0.2, 7 ")
    assert Settings().callback_retry_delays == (0.2, 7.0)


def test_retry_after_is_seconds_or_an_http_date():
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0 and parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0  # in the past: now
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 -0000", now) == 30.0  # no zone: UTC
    for garbage in (None, "", "soon", "-5", "1.5", "²", "12 s", "Mon, 99 Foo 2023 00:00:00 GMT"):
        assert parse_retry_after(garbage, now) is None, garbage


def test_retry_after_of_a_429_or_503_reaches_the_schedule(tmp_path, receiver_factory):
    settings = loopback_settings(tmp_path)
    for status, value, expected in ((503, "120", 120.0), (429, "7", 7.0), (503, "whenever", None),
                                    (500, "120", None)):
        receiver = receiver_factory(answer(status, {"Retry-After": value}))
        outcome = attempt_delivery(f"http://127.0.0.1:{receiver.port}/", b"{}", {}, settings)
        assert not outcome.delivered and outcome.status == status and outcome.retry_after_s == expected


def test_410_gone_is_final_at_once(tmp_path, receiver_factory, monkeypatch):
    receiver = receiver_factory(answer(410))
    settings = loopback_settings(tmp_path, callback_attempts=5, callback_retry_delays_s="0.1")
    connection, callbacks_queue = _fake_rq(settings, monkeypatch)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, f"http://127.0.0.1:{receiver.port}/")
    notify_terminal(ledger, request_id, settings, connection)
    _run_callbacks(callbacks_queue)
    _run_callbacks(callbacks_queue, until=time.time() + 1.2)  # when a second attempt would be due
    assert len(receiver.requests) == 1 and callbacks_queue.scheduled_job_registry.count == 0
    recorded = ledger.get(request_id)["callback"]
    assert recorded["delivered"] is False and recorded["status"] == 410 and recorded["attempts"] == 1
    assert "410" in recorded["error"]
    assert [e["action"] for e in ledger.audit_entries(request_id=request_id)][-1] == "callback.failed"


def test_a_next_attempt_that_cannot_be_scheduled_stays_pending(tmp_path, receiver_factory, monkeypatch):
    """Redis down when a failed attempt schedules the next one: the message stays pending with the attempt made
    and when the next is due, which is what the janitor needs to schedule it (tests/unit/test_janitor.py)."""
    receiver = receiver_factory(answer(500))
    settings = loopback_settings(tmp_path, callback_attempts=3)
    _fake_rq(settings, monkeypatch)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, f"http://127.0.0.1:{receiver.port}/")
    assert ledger.claim_callback(request_id, "msg_x", now_iso())

    def redis_down(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(callbacks, "enqueue_attempt", redis_down)
    result = deliver_callback(request_id, "msg_x", "{}", attempt=1)
    assert result["delivered"] is False and len(receiver.requests) == 1
    recorded = ledger.get(request_id)["callback"]
    assert recorded["pending"] and recorded["attempts"] == 1 and recorded["next_attempt_at"] is not None
    assert [r["id"] for r in ledger.pending_callbacks()] == [request_id]


def test_a_message_that_cannot_be_queued_stays_pending(tmp_path):
    """Redis unreachable when the request ends: nothing raises, and the message stays pending for the janitor."""
    import redis

    settings = loopback_settings(tmp_path)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, "https://hooks.example.com/x")
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    message_id = notify_terminal(ledger, request_id, settings, unreachable)
    recorded = ledger.get(request_id)["callback"]
    assert recorded["pending"] and recorded["message_id"] == message_id and recorded["attempts"] == 0
    assert recorded["error"].startswith("not queued yet")
    assert "callback.failed" not in [e["action"] for e in ledger.audit_entries(request_id=request_id)]


def test_an_ended_request_with_a_callback_url_is_pending_until_its_message_is_settled(tmp_path):
    """The ending itself marks the callback pending (no message yet), so that a crash before it is queued loses
    nothing; a request without a callback_url has none."""
    ledger = open_ledger(loopback_settings(tmp_path))
    request_id = _ended_request(ledger, "https://hooks.example.com/x")
    marker = ledger.get(request_id)["callback"]
    assert marker["pending"] and marker["message_id"] is None and marker["attempts"] == 0
    assert marker["at"] == ledger.get(request_id)["finished_at"]
    ledger.create({"id": "fr_silent", "model": "m", "method": "auto", "classes": [1]})
    ledger.request_cancel("fr_silent", "k")
    assert ledger.get("fr_silent")["callback"] is None
    assert [r["id"] for r in ledger.pending_callbacks()] == [request_id]


def test_a_message_of_an_earlier_ending_is_not_sent_once_the_request_ended_again(tmp_path, receiver_factory):
    """A succeeded request's message still has attempts to come when a rollback reverts the request: from that
    moment (before the reversal's own message is made) the old message is neither sent nor recorded."""
    receiver = receiver_factory(answer(204))
    settings = loopback_settings(tmp_path)
    ledger = open_ledger(settings)
    request_id = f"fr_{uuid.uuid4().hex[:12]}"
    ledger.create({"id": request_id, "model": "m", "method": "auto", "classes": [1],
                   "callback_url": f"http://127.0.0.1:{receiver.port}/"})
    ledger.mark_running(request_id)
    ledger.mark_succeeded(request_id, {})
    assert ledger.claim_callback(request_id, "msg_old", now_iso())["status"] == "succeeded"
    ledger.mark_reverted(request_id, actor="admin", to_state=1, reason="for the test")
    failed_meanwhile = callbacks.Attempt(False, 500, "answered 500")  # an attempt that was sending as it was reverted
    assert callbacks.record_failed_attempt(ledger, ledger.get(request_id), "msg_old", 1, failed_meanwhile,
                                           settings) is None  # not recorded: no next attempt
    for message in ("its message not made yet", "msg_new"):
        outcome, delay = deliver(ledger, request_id, "msg_old", "{}", settings, attempt=1)
        assert not outcome.delivered and f"superseded by a newer ending of the request ({message})" in outcome.error
        assert delay is None and receiver.requests == []
        assert not ledger.set_callback(request_id, {"delivered": True, "pending": False, "attempts": 1,
                                                    "message_id": "msg_old", "at": now_iso()})
        if message != "msg_new":
            claimed = ledger.claim_callback(request_id, "msg_new", now_iso())
            assert claimed["status"] == "reverted" and claimed["callback"]["message_id"] == "msg_new"
    delivered, _ = deliver(ledger, request_id, "msg_new", "{}", settings, attempt=1)
    assert delivered.delivered and len(receiver.requests) == 1 and not ledger.pending_callbacks()


def test_one_ending_makes_one_message_whoever_notifies_it(tmp_path, receiver_factory, monkeypatch):
    """The worker that ended the request and the janitor (or two janitors) may both notify the same ending: one
    message is made and queued; the other finds it made and sends nothing."""
    settings = loopback_settings(tmp_path)
    connection, callbacks_queue = _fake_rq(settings, monkeypatch)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, "https://hooks.example.com/x")
    first = notify_terminal(ledger, request_id, settings, connection)
    assert first is not None and notify_terminal(ledger, request_id, settings, connection) is None
    assert callbacks_queue.job_ids == [f"cb-{first}-1"] and ledger.get(request_id)["callback"]["message_id"] == first


def test_a_repeated_or_late_attempt_changes_nothing(tmp_path, receiver_factory):
    """RQ runs an attempt again after its job crashed, though the attempt was made and recorded (the crash came
    after): it is not sent again, and no outcome goes backwards (settled to pending, fewer attempts)."""
    receiver = receiver_factory(answer(500))
    settings = loopback_settings(tmp_path, callback_attempts=3)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, f"http://127.0.0.1:{receiver.port}/")
    assert ledger.claim_callback(request_id, "msg_r", now_iso())
    first, delay = deliver(ledger, request_id, "msg_r", "{}", settings, attempt=1)
    assert not first.delivered and delay is not None and len(receiver.requests) == 1
    again, delay = deliver(ledger, request_id, "msg_r", "{}", settings, attempt=1)
    assert "attempt 1 was made already" in again.error and delay is None and len(receiver.requests) == 1
    assert not ledger.set_callback(request_id, callbacks.pending("msg_r", 0))  # fewer attempts than recorded
    assert ledger.set_callback(request_id, {"delivered": True, "pending": False, "attempts": 2, "message_id": "msg_r",
                                            "status": 204, "at": now_iso()})
    assert not ledger.set_callback(request_id, callbacks.pending("msg_r", 2))  # settled stays settled
    late, _ = deliver(ledger, request_id, "msg_r", "{}", settings, attempt=3)
    assert "settled" in late.error and len(receiver.requests) == 1 and ledger.get(request_id)["callback"]["delivered"]


def test_an_attempt_whose_job_crashes_runs_again(tmp_path, receiver_factory, monkeypatch):
    """A failed delivery never raises; a crash (here the ledger unreachable once) does, and RQ runs the attempt
    again after CRASH_RETRY_DELAYS_S instead of losing the message with nothing recorded."""
    receiver = receiver_factory(answer(204))
    settings = loopback_settings(tmp_path, callback_attempts=3)
    connection, callbacks_queue = _fake_rq(settings, monkeypatch)
    ledger = open_ledger(settings)
    request_id = _ended_request(ledger, f"http://127.0.0.1:{receiver.port}/")
    crashes = [OSError("the database is unreachable")]
    real_deliver = callbacks.deliver

    def crash_once(*args, **kwargs):
        if crashes:
            raise crashes.pop()
        return real_deliver(*args, **kwargs)

    monkeypatch.setattr(callbacks, "deliver", crash_once)
    message_id = notify_terminal(ledger, request_id, settings, connection)
    _run_callbacks(callbacks_queue)
    job_id = f"cb-{message_id}-1"
    scheduled = callbacks_queue.scheduled_job_registry
    assert scheduled.get_job_ids() == [job_id] and len(receiver.requests) == 0  # not failed: to run again
    due = scheduled.get_scheduled_time(job_id).timestamp()
    assert due >= time.time() + callbacks.CRASH_RETRY_DELAYS_S[0] - 2
    import rq.scheduler

    monkeypatch.setattr(rq.scheduler, "current_timestamp", lambda: int(due) + 1)  # what RQ's scheduler calls now
    _run_callbacks(callbacks_queue)
    assert len(receiver.requests) == 1 and ledger.get(request_id)["callback"]["delivered"]


def test_the_answer_body_is_never_read(tmp_path, receiver_factory):
    """A receiver that answers 200 and then streams a body without end: the status is enough."""
    def endless(h):
        h.send_response(200)
        h.send_header("Content-Length", str(10**12))
        h.end_headers()
        chunk = b"x" * 65536
        with contextlib.suppress(OSError):
            for _ in range(100_000):
                h.wfile.write(chunk)

    receiver = receiver_factory(endless)
    started = time.monotonic()
    outcome = attempt_delivery(f"http://127.0.0.1:{receiver.port}/", b"{}", {}, loopback_settings(tmp_path))
    assert outcome.delivered and outcome.status == 200
    assert time.monotonic() - started < 0.9  # well within the 1 s deadline that reading it would hit


def test_the_host_header_is_ascii_with_brackets_for_ipv6():
    assert host_header("http://bücher.test/x") == "xn--bcher-kva.test"
    assert host_header("https://BÜCHER.test:8443/") == "xn--bcher-kva.test:8443"
    assert host_header("http://[::1]:9000/") == "[::1]:9000"
    assert host_header("https://[2001:db8::1]:443/") == "[2001:db8::1]"
    assert host_header("http://hooks.test./") == "hooks.test"


def test_the_name_resolved_is_the_name_sent():
    """Python's resolver encodes with IDNA 2003 ('faß.de' -> fass.de), httpx's Host and SNI with IDNA 2008
    (xn--fa-hia.de): the lookup is given the ASCII name, so it connects where the name it sends points."""
    lookups = []

    def recording(host, port):
        lookups.append(host)
        return ["127.0.0.1"]

    assert check_callback_target("http://faß.de/hook", LOOPBACK, resolver=recording)[1:] == ("xn--fa-hia.de", 80)
    assert lookups == ["xn--fa-hia.de"]
    with pytest.raises(CallbackRefused, match="invalid host name"):  # httpx could never send it: refused at intake
        check_callback_url_at_intake("http://☃.net/hook", Settings(callback_allow="127.0.0.0/8"), resolver=recording)
    assert lookups == ["xn--fa-hia.de"]


def test_an_idn_host_is_sent_as_its_ascii_form(tmp_path, receiver_factory):
    receiver = receiver_factory(answer(204))
    lookups = []

    def resolver(host, port):
        lookups.append(host)
        return ["127.0.0.1"]

    outcome = attempt_delivery(f"http://bücher.test:{receiver.port}/", b"{}", {}, loopback_settings(tmp_path),
                               resolver)
    assert outcome.delivered, outcome.error
    assert receiver.requests[0][1]["Host"] == f"xn--bcher-kva.test:{receiver.port}"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_literal_host_is_bracketed(tmp_path, receiver_factory):
    receiver = receiver_factory(answer(204), host="::1")
    settings = Settings(data_dir=tmp_path, callback_allow="::1", callback_timeout_s=1.0)
    outcome = attempt_delivery(f"http://[::1]:{receiver.port}/hook", b"{}", {}, settings)
    assert outcome.delivered, outcome.error
    assert receiver.requests[0][1]["Host"] == f"[::1]:{receiver.port}"


def test_a_request_without_callback_url_queues_nothing(tmp_path, database):
    ledger = Ledger(database)
    request_id = f"fr_{uuid.uuid4().hex[:12]}"
    ledger.create({"id": request_id, "model": "m", "method": "auto", "classes": [1]})
    assert notify_terminal(ledger, request_id, Settings(data_dir=tmp_path), connection=object()) is None


def test_the_test_suite_never_looks_up_a_host_name():
    import socket

    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("callbacks.example.com", 443)
    assert socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)[0][4][0] == "127.0.0.1"
